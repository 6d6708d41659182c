"""Ctrl-C stops a run promptly whichever of its threads the signal lands on."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.conftest import scripted_models, write_suite

# In the run: once the request loop's thread exists and the main thread waits for the first reply (each
# case's reply is 30 s away), SIGINT is sent to the loop's thread, not the main one, and its time written.
SIGNAL_THE_LOOP = """
import signal, threading, time

def _send_sigint_to_the_loop():
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        loop = [t for t in threading.enumerate() if t.name == "llm-harness-loop"]
        if loop:
            time.sleep(1.0)
            with open("signalled_at", "w") as handle:
                handle.write(repr(time.monotonic()))
            signal.pthread_kill(loop[0].ident, signal.SIGINT)
            return
        time.sleep(0.05)

def pytest_configure(config):
    threading.Thread(target=_send_sigint_to_the_loop, daemon=True).start()
"""


@pytest.mark.parametrize("workers", ["0", "2"])
def test_ctrl_c_landing_on_another_thread_stops_a_run_waiting_for_its_first_reply(pytester, workers):
    write_suite(pytester.path / "evals", "slow", [{"id": f"c{i}", "input": "SLEEP:30000 ANSWER: a", "target": "a"}
                                                  for i in range(3)])
    pytester.makeconftest(SIGNAL_THE_LOOP)
    models = scripted_models(pytester)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pytest", "evals", "-n", workers, "--llm-models-file", models,
                           "--llm-report-dir", "out", "--llm-cache", "off", "-p", "no:cacheprovider"],
                          cwd=pytester.path, capture_output=True, text=True, timeout=120)
    ended = time.monotonic()
    output = done.stdout + done.stderr
    assert done.returncode == pytest.ExitCode.INTERRUPTED, output[-3000:]
    assert "KeyboardInterrupt" in output
    signalled = float((pytester.path / "signalled_at").read_text())
    assert started < signalled < ended
    # a main thread deaf to the signal would wait for the first reply, 30 s after the requests were sent
    assert ended - signalled < 10, f"the run ended {ended - signalled:.1f} s after SIGINT"
