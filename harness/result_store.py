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
import threading
from array import array
from pathlib import Path
from typing import Any, Iterator, Sequence, overload

from harness.results import CaseResult, case_values

_LENGTH = struct.Struct("<I")
_MARSHAL, _PICKLE = b"m", b"p"


class ResultSpool:
    """An append-only file of encoded case results (length, codec, fields in ``CaseResult`` order).

    Results are JSON primitives on the wire; one a custom scorer filled with other objects in this
    process is pickled instead (the file is this run's own, never read from elsewhere)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path.open("wb")
        self._reader = os.open(path, os.O_RDONLY)
        self._size = 0
        self._dirty = False
        self._lock = threading.Lock()

    def append(self, result: CaseResult) -> int:
        """Write one result; return its offset."""
        values = case_values(result)
        try:
            payload = _MARSHAL + marshal.dumps(values)
        except ValueError:  # not primitives only
            payload = _PICKLE + _pickled(values)
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


def _pickled(values: tuple[Any, ...]) -> bytes:
    """Pickled fields; one that cannot be pickled (a scorer kept a lambda, a lock) is kept as its repr,
    which is what a report shows of it anyway: a result is never lost to its encoding."""
    try:
        return pickle.dumps(values, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - pickling runs arbitrary __reduce__ code
        def plain(value: Any) -> Any:
            try:
                pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
                return value
            except Exception:  # noqa: BLE001
                return repr(value)

        return pickle.dumps(tuple(plain(v) for v in values), protocol=pickle.HIGHEST_PROTOCOL)


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

    def take(self, mask: Sequence[bool]) -> "ResultRows":
        """The rows where ``mask`` is true."""
        return ResultRows(self._spool, array("q", (at for at, keep in zip(self._offsets, mask) if keep)))


def take(results: Sequence[CaseResult], mask: Sequence[bool]) -> Sequence[CaseResult]:
    """``results`` where ``mask`` is true, staying on disk when they are."""
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
        self._lock = threading.Lock()  # results arrive on one thread while another reads them in order

    def __len__(self) -> int:
        return len(self._row)

    def __contains__(self, nodeid: object) -> bool:
        return nodeid in self._row

    def add(self, result: CaseResult) -> bool:
        """Keep ``result`` unless its case has one already; whether it was kept."""
        at = None
        with self._lock:
            if result.nodeid in self._row:
                return False
            if self._spool is not None:
                at = self._spool.append(result)
            self._row[result.nodeid] = len(self._row)
            if at is None:
                self._objects.append(result)
            else:
                self._at.append(at)
            self._line.append(result.line)
            self._dataset.append(self._code(result.dataset))
            self._attack.append(self._code(result.attack or ""))
        return True

    def get(self, nodeid: str) -> CaseResult | None:
        with self._lock:
            row = self._row.get(nodeid)
            if row is None:
                return None
            if self._spool is None:
                return self._objects[row]
            at = self._at[row]
        return self._spool.read(at)

    def snapshot(self) -> tuple[bytes, bytes, bytes, bytes, list[str], list[CaseResult]]:
        """The rows so far, as one consistent copy: spool offsets, lines, dataset and perturbation
        codes (int64 bytes), the code names, and (no spool) the results."""
        with self._lock:
            return (self._at.tobytes(), self._line.tobytes(), self._dataset.tobytes(), self._attack.tobytes(),
                    list(self._names), list(self._objects))

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
    taken = [(suite, model, run, run.snapshot()) for suite, model, run in parts]
    taken = [part for part in taken if part[3][1]]
    if not taken:
        return []
    import numpy as np  # here: a run of hand-written tests alone does not import it

    names = sorted({name for *_, shot in taken for name in shot[4]})
    rank = {name: index for index, name in enumerate(names)}
    suites = {name: index for index, name in enumerate(sorted({suite for suite, *_ in taken}))}
    keys: list[list[Any]] = [[], [], [], [], []]  # suite, dataset, line, attack, model
    for suite, model, _, (_, lines, datasets, attacks, codes_of, _) in taken:
        line = np.frombuffer(lines, dtype=np.int64)
        codes = np.array([rank[name] for name in codes_of], dtype=np.int64)
        keys[0].append(np.full(len(line), suites[suite], dtype=np.int64))
        keys[1].append(codes[np.frombuffer(datasets, dtype=np.int64)])
        keys[2].append(line)
        keys[3].append(codes[np.frombuffer(attacks, dtype=np.int64)])
        keys[4].append(np.full(len(line), model, dtype=np.int64))
    suite_key, dataset, line, attack, model_key = (np.concatenate(part) for part in keys)
    order = np.lexsort((model_key, attack, line, dataset, suite_key))  # the last key sorts first
    spool = taken[0][2]._spool
    if spool is not None and all(run._spool is spool for _, _, run, _ in taken):
        offsets = np.concatenate([np.frombuffer(shot[0], dtype=np.int64) for *_, shot in taken])
        return ResultRows(spool, array("q", offsets[order].tobytes()))
    objects = [r for _, _, run, shot in taken for r in (shot[5] if run._spool is None else
               [run._spool.read(at) for at in array("q", shot[0])])]
    return [objects[i] for i in order.tolist()]
