"""The installed packages, for reproducibility: the versions that matter, and every distribution.

Read from the installed distributions' metadata (importlib.metadata), never by importing a
package: ``import torch`` takes seconds and may touch a GPU, its version is one line of a file.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

# the packages a run's figures depend on: engines, training, clients, the test runner, the harness
PACKAGES = (
    "pytest-llm-harness", "torch", "transformers", "trl", "vllm", "sglang", "openai", "aiohttp", "pytest",
    "pytest-xdist", "numpy",
)  # fmt: skip
# the side file of report.json: every installed distribution, as ``pip freeze`` lists them
FREEZE_FILENAME = "requirements-freeze.txt"
_NORMALIZE = re.compile(r"[-_.]+")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Each package's installed version (as ``importlib.metadata.version`` gives it), None for one not
    installed."""
    installed = _installed()
    return {name: (installed.get(_normalize(name)) or (None, None))[1] for name in names}


def installed_distributions() -> list[tuple[str, str]]:
    """(name, version) of every installed distribution, sorted by name (case-insensitively).

    A distribution installed twice on the path counts once, as the first found: the one Python
    imports."""
    return sorted(_installed().values(), key=lambda item: (_normalize(item[0]), item[1]))


@lru_cache(maxsize=1)
def _installed() -> dict[str, tuple[str, str]]:
    """Every installed distribution by normalised name: one pass over the path (~20 ms for a few hundred),
    kept (:func:`warm_packages` reads it again while a run's requests are in flight). Name and version
    are read from the top of each METADATA file: the email parser importlib.metadata uses for
    ``dist.metadata`` takes 10x longer."""
    from importlib.metadata import distributions

    found: dict[str, tuple[str, str]] = {}
    for dist in distributions():
        name, version = _name_version(dist)
        if name:
            found.setdefault(_normalize(name), (name, version or "unknown"))
    return found


def warm_packages() -> None:
    """Read the installed distributions anew (a run started in a process that installed packages
    since the last one must not report the old set), ahead of the report that lists them."""
    _installed.cache_clear()
    _installed()


def _normalize(name: str) -> str:
    # PEP 503: runs of -, _ and . are one -, case folded
    return _NORMALIZE.sub("-", name).lower()


def freeze_text() -> str:
    """``name==version`` for every installed distribution, one a line, sorted: what ``pip freeze`` lists."""
    return "".join(f"{name}=={version}\n" for name, version in installed_distributions())


def _name_version(dist: Any) -> tuple[str | None, str | None]:
    name = version = None
    try:
        text = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
    except (OSError, UnicodeDecodeError):
        text = ""
    for line in text.splitlines():
        if not line.strip():  # the headers end at the first blank line
            break
        if name is None and line.startswith("Name:"):
            name = line[5:].strip()
        elif version is None and line.startswith("Version:"):
            version = line[8:].strip()
        if name and version:
            return name, version
    try:  # an odd METADATA file: importlib.metadata's own parser
        return name or dist.metadata["Name"], version or dist.version
    except Exception:  # noqa: BLE001 - a broken distribution costs the freeze its line, not the report
        return name, version
