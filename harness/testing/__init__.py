"""Test helpers shipped with the harness: a deterministic OpenAI-compatible stub server."""
