"""Classification metrics (SPEC §4)."""
