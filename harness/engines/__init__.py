"""Engines: the OpenAI-compatible client, managed server processes, the bundled CPU model.

Heavy dependencies (torch, transformers) are imported only inside the modules that run a model.
"""
