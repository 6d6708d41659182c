"""Root conftest: plugins the project's own tests use (pytest requires them at the top level)."""

pytest_plugins = ["pytester"]
