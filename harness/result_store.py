"""Case results on disk: the controller appends each one to a spool file as it arrives and keeps
only where it lies, so a million results are not a million objects in memory.

:class:`RunResults` holds one suite's results on one model (node id -> spool row); :class:`ResultRows`
is a read-only sequence of results in data order that decodes each one when it is read. Metrics
read them once into columns (harness.suite_metrics), the report writers one at a time.
"""

from __future__ import annotations

import marshal
import os
import pickle
import struct
import tempfile
import threading
from array import array
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, overload

from harness.results import _CASE_FIELDS, CaseResult

_LENGTH = struct.Struct("<I")
_MARSHAL, _PICKLE = b"m", b"p"


class ResultSpool:
    """An append-only file of encoded case results (length, codec, fields in ``CaseResult`` order).

    Results are JSON primitives on the wire; one a custom scorer filled with other objects in this
    process is pickled instead (the file is this run's own, never read from elsewhere)."""

    def __init__(self, path: Path | None = None) -> None:
        if path is None:
            handle, name = tempfile.mkstemp(prefix="llm-harness-results-", suffix=".spool")
            os.close(handle)
            path = Path(name)
        self.path = path
        self._file = path.open("wb")
        self._reader = os.open(path, os.O_RDONLY)
        self._size = 0
        self._dirty = False
        self._lock = threading.Lock()

    def append(self, result: CaseResult) -> int:
        """Write one result; return its offset."""
        values = tuple(getattr(result, name) for name in _CASE_FIELDS)
        try:
            payload = _MARSHAL + marshal.dumps(values)
        except ValueError:  # not primitives only
            payload = _PICKLE + pickle.dumps(values, protocol=pickle.HIGHEST_PROTOCOL)
        with self._lock:
            at = self._size
            self._file.write(_LENGTH.pack(len(payload)))
            self._file.write(payload)
            self._size += _LENGTH.size + len(payload)
            self._dirty = True
        return at

    def read(self, at: int) -> CaseResult:
        """The result written at ``at`` (a new object on every read)."""
        if self._dirty:
            with self._lock:
                self._file.flush()
                self._dirty = False
        (length,) = _LENGTH.unpack(os.pread(self._reader, _LENGTH.size, at))
        payload = os.pread(self._reader, length, at + _LENGTH.size)
        values = marshal.loads(payload[1:]) if payload[:1] == _MARSHAL else pickle.loads(payload[1:])
        return CaseResult(*values)

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.close()
                os.close(self._reader)
        self.path.unlink(missing_ok=True)


class ResultRows(Sequence[CaseResult]):
    """Results read from a spool, in a fixed order; each read decodes a fresh object."""

    def __init__(self, spool: ResultSpool, offsets: Sequence[int]) -> None:
        self._spool = spool
        self._offsets = offsets

    def __len__(self) -> int:
        return len(self._offsets)

    @overload
    def __getitem__(self, index: int) -> CaseResult: ...
    @overload
    def __getitem__(self, index: slice) -> "ResultRows": ...

    def __getitem__(self, index: int | slice) -> "CaseResult | ResultRows":
        if isinstance(index, slice):
            return ResultRows(self._spool, self._offsets[index])
        return self._spool.read(self._offsets[index])

    def __iter__(self) -> Iterator[CaseResult]:
        read = self._spool.read
        for at in self._offsets:
            yield read(at)

    def where(self, keep: Callable[[CaseResult], bool]) -> "ResultRows":
        """The rows whose result ``keep`` accepts, in the same order (one pass)."""
        return ResultRows(self._spool, array("q", (at for at, r in zip(self._offsets, self) if keep(r))))

    def take(self, mask: Sequence[bool]) -> "ResultRows":
        """The rows where ``mask`` is true."""
        return ResultRows(self._spool, array("q", (at for at, keep in zip(self._offsets, mask) if keep)))


def where(results: Sequence[CaseResult], keep: Callable[[CaseResult], bool]) -> Sequence[CaseResult]:
    """``results`` filtered, staying on disk when they are."""
    return results.where(keep) if isinstance(results, ResultRows) else [r for r in results if keep(r)]


def take(results: Sequence[CaseResult], mask: Sequence[bool]) -> Sequence[CaseResult]:
    return results.take(mask) if isinstance(results, ResultRows) else [r for r, keep in zip(results, mask) if keep]


class RunResults:
    """One suite's results on one model: node id -> spool row, and each row's place in data order.

    Only the first result of a case counts (see :meth:`add`). Without a spool (a plan made outside
    a run) the results stay in memory."""

    def __init__(self, spool: ResultSpool | None = None) -> None:
        self._spool = spool
        self._row: dict[str, int] = {}
        self._objects: list[CaseResult] = []  # no spool only
        self._at = array("q")
        self._line = array("q")
        self._dataset = array("q")  # codes into _names
        self._attack = array("q")
        self._codes: dict[str, int] = {}
        self._names: list[str] = []

    def __len__(self) -> int:
        return len(self._row)

    def __contains__(self, nodeid: object) -> bool:
        return nodeid in self._row

    def add(self, result: CaseResult) -> bool:
        """Keep ``result`` unless its case has one already; whether it was kept."""
        if result.nodeid in self._row:
            return False
        self._row[result.nodeid] = len(self._row)
        if self._spool is None:
            self._objects.append(result)
        else:
            self._at.append(self._spool.append(result))
        self._line.append(result.line)
        self._dataset.append(self._code(result.dataset))
        self._attack.append(self._code(result.attack or ""))
        return True

    def get(self, nodeid: str) -> CaseResult | None:
        row = self._row.get(nodeid)
        if row is None:
            return None
        return self._objects[row] if self._spool is None else self._spool.read(self._at[row])

    def _code(self, text: str) -> int:
        code = self._codes.get(text)
        if code is None:
            code = self._codes[text] = len(self._names)
            self._names.append(text)
        return code

    def ordered(self) -> Sequence[CaseResult]:
        """Every result in data order (dataset, line, perturbation), whichever worker finished first."""
        return merged([("", 0, self)])


def merged(parts: Sequence[tuple[str, int, RunResults]]) -> Sequence[CaseResult]:
    """The results of several runs in report order: suite name, dataset, line, perturbation, then
    model. ``parts``: each run's suite name, its model's rank, and its results."""
    import numpy as np

    parts = [part for part in parts if len(part[2])]
    if not parts:
        return []
    names = sorted({name for _, _, run in parts for name in run._names})
    rank = {name: index for index, name in enumerate(names)}
    suites = {name: index for index, name in enumerate(sorted({suite for suite, _, _ in parts}))}
    keys: list[list[Any]] = [[], [], [], [], []]  # suite, dataset, line, attack, model
    for suite, model, run in parts:
        n = len(run)
        codes = np.array([rank[name] for name in run._names], dtype=np.int64)
        keys[0].append(np.full(n, suites[suite], dtype=np.int64))
        keys[1].append(codes[np.frombuffer(run._dataset, dtype=np.int64)])
        keys[2].append(np.frombuffer(run._line, dtype=np.int64))
        keys[3].append(codes[np.frombuffer(run._attack, dtype=np.int64)])
        keys[4].append(np.full(n, model, dtype=np.int64))
    suite_key, dataset, line, attack, model_key = (np.concatenate(part) for part in keys)
    order = np.lexsort((model_key, attack, line, dataset, suite_key))  # the last key sorts first
    spool = parts[0][2]._spool
    if spool is not None and all(run._spool is spool for _, _, run in parts):
        offsets = np.concatenate([np.frombuffer(run._at, dtype=np.int64) for _, _, run in parts])
        return ResultRows(spool, array("q", offsets[order].tobytes()))
    objects = [run.get(nodeid) for _, _, run in parts for nodeid in run._row]
    return [objects[i] for i in order.tolist()]  # type: ignore[misc]
