"""The domain: pure Python, no cloud imports."""
