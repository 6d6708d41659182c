"""Engines: the kinds that serve a model (``registry.py`` and one module per kind), the pipelined
OpenAI-compatible client, managed server processes, the bundled CPU model.

Heavy dependencies (torch, transformers, vllm) are imported only inside the modules that run a model.
"""
