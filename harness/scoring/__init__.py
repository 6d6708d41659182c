"""Extraction, per-case scorers and suite metrics: pure functions, no I/O."""
