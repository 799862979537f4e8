"""Fast tests of the core: no processes, no network."""
