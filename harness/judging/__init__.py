"""Model-graded scoring (the ``judge`` scorer): judge specs, rubric prompts, built-in rubrics, verdict parsing.

This package is pure: it renders judge prompts and parses judge replies; sending the judge
requests is the engine pipeline's job.
"""
