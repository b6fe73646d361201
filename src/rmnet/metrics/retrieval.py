"""Retrieval metrics (SPEC §5)."""
