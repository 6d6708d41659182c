"""Which code a suite file may name by import string (``"package.module:attr"``).

Suite files come from others, so an import string in one is a request to run code. Allowed:

- modules of the project under test: files under the rootdir (the user's own code, as trusted
  as its ``conftest.py``), but not installed packages or the standard library, even from a
  virtual environment inside the rootdir;
- modules the ini key ``llm_allow_imports`` lists, by prefix (``mypkg`` allows ``mypkg`` and
  ``mypkg.tox``), for installed packages the user vouches for.

Registered names (built-in scorers and classifiers, ``@harness.scorer`` in a conftest.py,
classifiers an installed package registers under the ``pytest_llm_harness.classifiers``
entry-point group) need no import string at all. The object an import string reaches must
itself come from an allowed module: ``mymod:Popen`` re-exported from ``subprocess`` is not.

The plugin sets each pytest process's policy from its config (rootdir and ini), and puts the
previous one back when that config ends; outside pytest the working directory is the root.
"""

from __future__ import annotations

import importlib.util
import site
import sysconfig
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

ALLOW_INI = "llm_allow_imports"
CLASSIFIER_ENTRY_POINTS = "pytest_llm_harness.classifiers"


class ImportNotAllowed(ValueError):
    """An import string names a module outside the project that no one allowed (a ValueError:
    collection reports it per suite)."""


@lru_cache(maxsize=1)
def _installed_dirs() -> tuple[Path, ...]:
    """Where the standard library and installed packages live: never "the user's own code"."""
    paths = {sysconfig.get_paths().get(key) for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    paths.update(site.getsitepackages())
    paths.add(site.getusersitepackages())
    return tuple(Path(p).resolve() for p in paths if p)


def _is_installed(path: Path) -> bool:
    return any(part in ("site-packages", "dist-packages") for part in path.parts) or any(
        path.is_relative_to(d) for d in _installed_dirs())


def _locations(module: str) -> list[Path] | None:
    """The files or folders a module's top-level package is loaded from, found without importing it;
    None for a module that cannot be found, empty for one without a file (built-in, frozen)."""
    top = module.partition(".")[0]
    try:
        spec = importlib.util.find_spec(top)  # a top-level name: nothing is imported to find it
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    places = list(spec.submodule_search_locations or [])
    if spec.has_location and spec.origin:
        places.append(spec.origin)
    return [Path(p).resolve() for p in places]


@dataclass(frozen=True)
class ImportPolicy:
    """Project roots whose modules may be imported, and module prefixes allowed explicitly."""

    roots: tuple[Path, ...]
    prefixes: tuple[str, ...] = ()

    def allowed_by_prefix(self, module: str) -> bool:
        return any(module == p or module.startswith(p + ".") for p in self.prefixes)

    def problem(self, module: str) -> str | None:
        """Why ``module`` may not be imported, or None when it may."""
        if self.allowed_by_prefix(module):
            return None
        places = _locations(module)
        if places is None:
            return f"cannot import {module!r}: no module named {module.partition('.')[0]!r}"
        if places and all(any(p.is_relative_to(r) for r in self.roots) and not _is_installed(p) for p in places):
            return None
        roots = ", ".join(str(r) for r in self.roots)
        return (f"module {module!r} is not part of the project under test (files under {roots}) and is not "
                f"allowed: list it in the ini key {ALLOW_INI} (e.g. '{ALLOW_INI} = {module.partition('.')[0]}' "
                f"in pytest.ini) to allow it, or register a classifier under the entry-point group "
                f"{CLASSIFIER_ENTRY_POINTS}")

    def check(self, module: str, what: str) -> None:
        problem = self.problem(module)
        if problem is not None:
            raise ImportNotAllowed(f"{what}: {problem}")

    def check_origin(self, obj: Any, what: str) -> None:
        """The object an import string reached must be defined in an allowed module too."""
        defined_in = getattr(obj, "__module__", None) if callable(obj) else type(obj).__module__
        if not isinstance(defined_in, str):
            raise ImportNotAllowed(f"{what}: cannot tell which module defines {obj!r:.80}")
        self.check(defined_in, what)


_policy: ImportPolicy | None = None


def current_policy() -> ImportPolicy:
    """The policy of this process: the running pytest config's, else the working directory as root."""
    return _policy if _policy is not None else ImportPolicy((Path.cwd().resolve(),))


def use_policy(policy: ImportPolicy | None) -> ImportPolicy | None:
    """Set this process's policy; returns the one it replaces (to put back)."""
    global _policy
    previous, _policy = _policy, policy
    return previous


def configure(config: Any) -> None:
    """Set the policy from a pytest config (rootdir, ``llm_allow_imports``) for as long as it lives:
    an in-process pytest run (pytester) must not leave its rootdir behind."""
    prefixes = tuple(str(p).strip().rstrip(".") for p in config.getini(ALLOW_INI) or () if str(p).strip())
    previous = use_policy(ImportPolicy((Path(config.rootpath).resolve(),), prefixes))
    config.add_cleanup(lambda: use_policy(previous))
