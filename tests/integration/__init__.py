"""Tests against real adapters: SQLite files today, the emulators later."""
