"""Extraction, per-case scorers and suite metrics: pure functions, no I/O.

Importing the package registers the built-in scorers (each registers when its module loads)."""

from harness.scoring import checklist, judged, scorers, toxicity  # noqa: F401
