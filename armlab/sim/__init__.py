"""Data sets, replays, the end-to-end demo, off-policy evaluation drivers and the report."""
