"""Live progress of a run: what the engines and the requests are doing, while they do it.

A daemon thread on the controller (the process that sends every request, also under xdist)
writes one line every few seconds: while an engine starts, what it is doing (the last line of
its log) and for how long; while requests are in flight, per model, requests answered / total,
cached, errors, in flight, requests/s, output tokens/s, elapsed and ETA. The terminal gets a
styled line (rich) when it is a terminal, a plain line otherwise (CI logs stay readable); `-q`
writes a third as often, `-qq` nothing. ``progress.log`` in the report folder gets every line
in ``key=value`` form, for scripts that follow a run.

The lines go to a duplicate of the terminal's file descriptor taken before any item runs:
pytest captures what a test writes by redirecting fd 1, and a line written from this thread
while an item runs would otherwise land in that item's captured output.
"""

from __future__ import annotations

import collections
import os
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Callable, Protocol

from harness.textsafe import visible

RATE_WINDOW_S = 30.0  # requests/s and ETA over the last half minute: a warm-up does not linger
LOG_INTERVAL_S = 5.0


@dataclass
class ModelCounts:
    """One model's requests: planned, answered (cached ones included), from the cache, failed."""

    total: int = 0
    answered: int = 0
    cached: int = 0
    errors: int = 0


@dataclass
class Snapshot:
    """What the run's requests look like at one moment."""

    models: dict[str, ModelCounts]
    in_flight: int = 0
    output_tokens: int = 0
    judged: int = 0  # judge requests answered (they share the pool, so they count towards the rate)

    @property
    def total(self) -> int:
        return sum(m.total for m in self.models.values())

    @property
    def answered(self) -> int:
        return sum(m.answered for m in self.models.values())

    @property
    def cached(self) -> int:
        return sum(m.cached for m in self.models.values())

    @property
    def errors(self) -> int:
        return sum(m.errors for m in self.models.values())


class Source(Protocol):
    """What the monitor reads: ``harness.generation.Generation``."""

    def progress(self) -> Snapshot: ...

    def finished(self) -> bool: ...


@dataclass
class Figures:
    """A snapshot with its rates: the content of one progress line."""

    snapshot: Snapshot
    elapsed_s: float
    requests_per_s: float | None
    tokens_per_s: float | None
    eta_s: float | None
    done: bool = False


def clock(seconds: float | None) -> str:
    """0:42, 12:03, 1:02:03."""
    if seconds is None:
        return "--"
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _rate(value: float | None) -> str:
    if value is None:
        return "--"
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


class Rates:
    """Requests/s, output tokens/s and the ETA over a sliding window of samples."""

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self.window_s = window_s
        self._samples: collections.deque[tuple[float, int, int]] = collections.deque()

    def add(self, now: float, snapshot: Snapshot) -> tuple[float | None, float | None, float | None]:
        sent = snapshot.answered - snapshot.cached + snapshot.judged  # what the engines answered, not the cache
        self._samples.append((now, sent, snapshot.output_tokens))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window_s:
            self._samples.popleft()
        first_t, first_n, first_tok = self._samples[0]
        span = now - first_t
        if span <= 0 or sent == 0:
            return None, None, None
        rps = (sent - first_n) / span
        tps = (snapshot.output_tokens - first_tok) / span
        remaining = snapshot.total - snapshot.answered
        eta = remaining / rps if rps > 0 else None
        return rps, tps, (0.0 if remaining == 0 else eta)


def plain_line(f: Figures) -> str:
    """The line CI logs keep: ``llm-harness 0:42 · 312/800 answered · cached 100 · errors 2 · ...``."""
    s = f.snapshot
    head = "llm-harness done in" if f.done else "llm-harness"
    parts = [f"{head} {clock(f.elapsed_s)}", f"{s.answered}/{s.total} answered"]
    if s.cached:
        parts.append(f"cached {s.cached}")
    parts.append(f"errors {s.errors}")
    if not f.done:
        parts.append(f"in flight {s.in_flight}")
    if s.judged:
        parts.append(f"judged {s.judged}")
    parts.append(f"{_rate(f.requests_per_s)} req/s")
    parts.append(f"{_rate(f.tokens_per_s)} tok/s")
    if not f.done:
        parts.append(f"ETA {clock(f.eta_s)}" if f.eta_s is not None else "ETA after the first replies")
    line = " · ".join(parts)
    if len(s.models) > 1:
        line += " | " + " · ".join(f"{visible(name, False)} {m.answered}/{m.total}"
                                   + (f" ({m.errors} err)" if m.errors else "") for name, m in s.models.items())
    return line


def log_line(f: Figures, when: datetime | None = None) -> str:
    """progress.log's form: an ISO time and key=value pairs, one model per ``model=`` line."""
    s = f.snapshot
    stamp = (when or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")
    figures = (f"answered={s.answered} total={s.total} cached={s.cached} errors={s.errors} in_flight={s.in_flight} "
               f"judged={s.judged} req_s={_num(f.requests_per_s)} tok_s={_num(f.tokens_per_s)} "
               f"elapsed_s={f.elapsed_s:.1f} eta_s={_num(f.eta_s)}")
    lines = [f"{stamp} {'done' if f.done else 'progress'} {figures}"]
    for name, m in s.models.items():
        lines.append(f"{stamp} model={_token(name)} answered={m.answered} total={m.total} cached={m.cached} "
                     f"errors={m.errors}")
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _token(text: str) -> str:
    """A model name as one key=value token (names may hold spaces in a models file)."""
    return visible(text, False).replace(" ", "_") or "-"


class Sink(Protocol):
    def line(self, text: str, figures: Figures | None) -> None: ...

    def close(self) -> None: ...


class TerminalSink:
    """Progress lines on the terminal: rich-styled where the terminal takes colour, plain text elsewhere.

    Lines go through pytest's terminal writer, from the main thread between items when items run
    here (``pump``, called as each item finishes), so that they start on a line of their own and
    pytest's dots and percentages stay aligned. A line that waits longer than ``patience_s`` (an
    item waiting for a slow reply) is written by the progress thread itself: through pytest's
    writer when no item runs in this process, else to a duplicate of the terminal's descriptor,
    which the item's output capture does not redirect."""

    def __init__(self, config: Any, patience_s: float) -> None:
        self._writer = config.get_terminal_writer()
        self.patience_s = patience_s
        self.busy = False  # an item runs in this process: its output is being captured
        self._pending: tuple[str, Figures | None, float] | None = None
        self._last_pump = float("-inf")
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        try:
            fd = os.dup(sys.stdout.fileno())  # the terminal itself, whatever capture does to fd 1 later
        except (AttributeError, OSError, ValueError):
            fd = None  # stdout is not a file (pytester's inline runs): pytest's writer only
        if fd is not None:
            self._file = open(fd, "w", encoding="utf-8", errors="replace", closefd=True)
        if self._writer.hasmarkup and not os.environ.get("NO_COLOR"):
            # the styled lines' library, imported here on the main thread: the progress thread imports nothing
            import rich.console  # noqa: F401
            import rich.text  # noqa: F401

    def line(self, text: str, figures: Figures | None) -> None:
        now = time.monotonic()
        with self._lock:
            self._pending = (text, figures, now)
            if now - self._last_pump < self.patience_s:
                return  # the main thread writes it when the current item ends
            self._write_pending(direct=self.busy)

    def pump(self) -> None:
        """On the main thread, between items: write the waiting line, if any."""
        with self._lock:
            self._last_pump = time.monotonic()
            self._write_pending(direct=False)

    def _write_pending(self, direct: bool) -> None:
        if self._pending is None:
            return
        text, figures, _ = self._pending
        self._pending = None
        styled = self._writer.hasmarkup and figures is not None and not os.environ.get("NO_COLOR")
        shown = _render(_styled(figures, text)) if styled and figures is not None else text
        if direct and self._file is not None:
            fresh = "\n" if self._writer.width_of_current_line else ""
            self._file.write(f"{fresh}{shown}\n")
            self._file.flush()
            return
        if self._writer.width_of_current_line:
            self._writer.line()
        self._writer.line(shown)
        self._writer.flush()

    def close(self) -> None:
        with self._lock:
            self._pending = None  # stale by now: the summary has the last word
            if self._file is not None:
                try:
                    self._file.close()
                except OSError:
                    pass
                self._file = None


def _render(text: Any) -> str:
    """A rich Text as a string with its colours (ANSI), for pytest's writer."""
    import io

    from rich.console import Console

    buffer = io.StringIO()
    Console(file=buffer, force_terminal=True, color_system="standard", highlight=False, soft_wrap=True,
            width=10_000).print(text, end="")
    return buffer.getvalue()


def _styled(f: Figures, text: str) -> Any:
    """A rich line: a bar of the share answered, then the plain figures, errors in red."""
    from rich.text import Text

    s = f.snapshot
    share = s.answered / s.total if s.total else 1.0
    width = 20
    filled = int(round(share * width))
    line = Text()
    line.append("llm-harness ", style="bold")
    line.append("━" * filled, style="green" if not s.errors else "yellow")
    line.append("━" * (width - filled), style="grey37")
    line.append(f" {share:4.0%} ", style="bold")
    rest = text.split(" · ", 1)[1] if " · " in text else text
    for part in rest.split(" · "):
        style = "red" if part.startswith("errors") and s.errors else None
        line.append(part, style=style)
        line.append(" · ", style="grey50")
    line.right_crop(3)
    line.append(f"  {clock(f.elapsed_s)}", style="cyan")
    return line


class LogSink:
    """progress.log: appended and flushed line by line, so `tail -f` follows the run."""

    def __init__(self, path: Path) -> None:
        from harness.report.files import private_dir

        private_dir(path.parent)
        self.path = path
        self._file: IO[str] | None = path.open("a", encoding="utf-8")

    def line(self, text: str, figures: Figures | None) -> None:
        if self._file is None:
            return
        body = log_line(figures) if figures is not None else (
            f"{datetime.now(timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')} {text}")
        self._file.write(body + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass
class _Phase:
    text: str
    started: float
    log: Path | None = None


class Monitor:
    """Writes the run's progress to its sinks until ``stop``; one per run, on the controller.

    ``terminal_s`` is the terminal's interval (0: no terminal lines); the log's is LOG_INTERVAL_S."""

    def __init__(self, terminal: Sink | None, log: Sink | None, terminal_s: float,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.terminal, self.log, self.terminal_s, self.now = terminal, log, terminal_s, now
        self._source: Source | None = None
        self._phase: _Phase | None = None
        self._started = 0.0
        self._rates = Rates()
        self._last_terminal = self._last_log = float("-inf")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.RLock()
        self._closed = False
        self.final_line: str | None = None  # "llm-harness done in ...", once the requests are done

    def phase(self, text: str, log: Path | None = None) -> None:
        """An engine starts (text: what, log: its log file): shown with its time until ``phase_done``."""
        with self._lock:
            self._phase = _Phase(text, self.now(), log)
        self._ensure_thread()

    def phase_done(self) -> None:
        with self._lock:
            self._phase = None

    def watch(self, source: Source) -> None:
        """Requests start: the first line now, then one per interval until the source finishes."""
        with self._lock:
            self._source = source
            self._phase = None
            self._started = self.now()
        self.tick(force=True)
        self._ensure_thread()

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._loop, name="llm-harness-progress", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        step = min(LOG_INTERVAL_S, self.terminal_s or LOG_INTERVAL_S) / 2
        while not self._stop.wait(step):
            source = self._source
            if source is not None and source.finished():
                self._finish()
            else:
                self.tick()

    def tick(self, force: bool = False) -> None:
        """Write a line to each sink whose interval has passed (to all of them when forced)."""
        with self._lock:
            now = self.now()
            if self._closed:
                return
            to_terminal = self.terminal is not None and self.terminal_s > 0 and (
                force or now - self._last_terminal >= self.terminal_s - 0.05)
            to_log = self.log is not None and (force or now - self._last_log >= LOG_INTERVAL_S - 0.05)
            if not (to_terminal or to_log):
                return
            text, figures = self._line(now)
            if text is None:
                return
            if to_terminal:
                self._last_terminal = now
                _safely(self.terminal, text, figures)
            if to_log:
                self._last_log = now
                _safely(self.log, text, figures)

    def _line(self, now: float, done: bool = False) -> tuple[str | None, Figures | None]:
        if self._source is not None:
            snapshot = self._source.progress()
            rps, tps, eta = self._rates.add(now, snapshot)
            figures = Figures(snapshot, now - self._started, rps, tps, eta, done)
            return plain_line(figures), figures
        if self._phase is not None:
            phase = self._phase
            return f"llm-harness {clock(now - phase.started)} · {phase.text}{_last_log_line(phase.log)}", None
        return None, None

    def _finish(self) -> None:
        """The requests are done: the last line, with the whole run's rates."""
        with self._lock:
            if self._closed or self._source is None:
                return
            self._rates = Rates(window_s=float("inf"))
            self._rates.add(self._started, Snapshot({}))
            text, figures = self._line(self.now(), done=True)
            # the terminal shows it in the summary, after the items: here it could land inside a line of dots
            self.final_line = text
            _safely(self.log, text or "", figures)
            self._source = None

    def stop(self) -> None:
        """The last line (when requests were watched) and the end of the thread; idempotent."""
        self._stop.set()
        thread = self._thread
        # not alive: not started yet (Ctrl-C may land between making the thread and starting it)
        if thread is not None and thread is not threading.current_thread() and thread.is_alive():
            thread.join(5)
        self._finish()
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for sink in (self.terminal, self.log):
            if sink is not None:
                sink.close()


def _safely(sink: Sink | None, text: str, figures: Figures | None) -> None:
    if sink is None:
        return
    try:
        sink.line(text, figures)
    except (OSError, ValueError):  # a closed terminal or a full disk: progress is not worth a failed run
        pass


def _last_log_line(path: Path | None) -> str:
    """`` · <the log's last line>``: what a starting engine says it is doing (its own log, shown escaped)."""
    if path is None:
        return ""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 4096))
            tail = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    if not lines:
        return ""
    last = lines[-1]
    # "2026-12-04 04:40:12,123 INFO cpu_server: converting ..." -> "converting ..."
    head, sep, message = last.partition(": ")
    if sep and (" INFO " in head or " WARNING " in head or " ERROR " in head):
        last = message
    home = str(Path.home())
    if len(home) > 1:
        last = last.replace(home, "~")  # a cache path under the home folder: the part worth reading fits
    last = visible(last, False)
    return f" · {last[:100]}{'…' if len(last) > 100 else ''}"


def progress_interval(config: Any, seconds: float) -> float:
    """The terminal's interval under pytest's verbosity: `-q` a third as often, `-qq` never."""
    verbosity = config.get_verbosity()
    if verbosity <= -2 or seconds <= 0:
        return 0.0
    return seconds * 3 if verbosity == -1 else seconds
