"""The `jobfleet` command."""
