"""The embedded backend: SQLite store, worker processes, an event log. No cloud needed."""
