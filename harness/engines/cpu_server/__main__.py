"""``python -m harness.engines.cpu_server``: see the package docstring."""

from harness.engines.cpu_server.process import main

main()
