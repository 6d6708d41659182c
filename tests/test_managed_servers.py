"""Managed servers other than the bundled one, through their real launch path.

A stand-in `vllm` executable (it takes `vllm serve` arguments and runs the stub server on the
port it was given) proves the lifecycle the harness owns: free port, command line, readiness
wait, requests, launch arguments in the report, a clean stop, and a clear error with the log
tail when the server dies while loading. The real vLLM, SGLang and llama.cpp need a GPU or a
native build; their command lines are pinned in test_launchers.py.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import answer_cases, load_report, write_suite

FAKE_VLLM = textwrap.dedent("""\
    #!{python}
    import json, os, sys
    args = sys.argv[1:]
    assert args[0] == "serve", args
    flags = dict(zip(args[2::2], args[3::2]))
    with open("launched.json", "w") as handle:
        json.dump({{"argv": sys.argv, "pid": os.getpid()}}, handle)
    if os.environ.get("FAKE_VLLM_CRASH"):
        print("torch.OutOfMemoryError: CUDA out of memory (fake)", flush=True)
        sys.exit(7)
    os.execv(sys.executable, [sys.executable, "-m", "harness.testing.stub_server", "--host", flags["--host"],
                              "--port", flags["--port"], "--models", flags["--served-model-name"]])
""")


def fake_vllm(folder: Path) -> Path:
    path = folder / "vllm"
    path.write_text(FAKE_VLLM.format(python=sys.executable))
    path.chmod(0o755)
    return path


def models_file(folder: Path, executable: Path) -> Path:
    spec = [{"name": "served-7b", "engine": "vllm", "model_path": "/models/served-7b",
             "options": {"executable": str(executable), "max_model_len": 4096, "tensor_parallel_size": 1},
             "args": ["--max-num-seqs", "8"]}]
    path = folder / "models.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_managed_vllm_server_is_started_used_recorded_and_stopped(pytester, workers):
    cases = answer_cases([(f"c{i}", f"a{i}", f"a{i}") for i in range(6)])
    write_suite(pytester.path / "evals", "geo", cases, gates=["accuracy == 1"], **{"pass": "record"})
    models = models_file(pytester.path, fake_vllm(pytester.path))
    result = pytester.runpytest_inprocess("-n", workers, "--llm-models-file", str(models), "--llm-report-dir",
                                          "out", "--llm-cache", "off", "evals")
    assert result.ret == 0, result.stdout.str()
    launched = json.loads((pytester.path / "launched.json").read_text())
    argv = launched["argv"][1:]
    assert argv[:4] == ["serve", "/models/served-7b", "--served-model-name", "served-7b"]
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert ["--max-model-len", "4096"] == argv[argv.index("--max-model-len"):argv.index("--max-model-len") + 2]
    assert argv[-2:] == ["--max-num-seqs", "8"]
    engine = load_report(pytester)["run"]["models"][0]["engine"]
    assert engine["kind"] == "vllm" and engine["launch"]["argv"][1:] == argv
    assert engine["base_url"] == f"http://127.0.0.1:{argv[argv.index('--port') + 1]}/v1"
    assert (pytester.path / "out" / "engine-served-7b.log").exists()
    deadline = time.monotonic() + 10
    while alive(launched["pid"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(launched["pid"])  # stopped at the end of the run


def test_a_server_that_dies_while_loading_is_a_clear_error(pytester, monkeypatch):
    write_suite(pytester.path / "evals", "geo", answer_cases([("c1", "a", "a")]))
    models = models_file(pytester.path, fake_vllm(pytester.path))
    monkeypatch.setenv("FAKE_VLLM_CRASH", "1")
    result = pytester.runpytest_inprocess("--llm-models-file", str(models), "--llm-cache", "off", "evals")
    assert result.ret == pytest.ExitCode.INTERNAL_ERROR
    out = result.stdout.str() + result.stderr.str()
    assert "exited with code 7 before it was ready" in out and "CUDA out of memory (fake)" in out


def test_vllm_offline_without_a_gpu_is_a_clear_error(pytester):
    write_suite(pytester.path / "evals", "geo", answer_cases([("c1", "a", "a")]))
    (pytester.path / "models.yaml").write_text(yaml.safe_dump(
        [{"name": "local-7b", "engine": "vllm-offline", "model_path": "/models/local-7b"}]))
    result = pytester.runpytest_inprocess("--llm-models-file", "models.yaml", "--llm-cache", "off", "evals")
    assert result.ret == pytest.ExitCode.INTERNAL_ERROR
    assert "vllm-offline could not load '/models/local-7b'" in result.stdout.str() + result.stderr.str()


@pytest.mark.parametrize(("entry", "message"), [
    ({"name": "m", "engine": "vllm"}, "engine vllm needs a model_path"),
    ({"name": "m", "engine": "tgi", "model_path": "x"}, "engine must be one of"),
    ({"name": "m", "engine": "vllm", "model_path": "x", "base_url": "http://h/v1"}, "started by the harness"),
    ({"name": "m", "engine": "llama-cpp", "model_path": "x", "options": {"tensor_parallel_size": 2}},
     "llama-cpp does not take tensor_parallel_size"),
    ({"name": "m", "engine": "cpu"}, "engine cpu needs model_path: a Hugging Face model folder"),
    ({"name": "m", "engine": "cpu", "model_path": "no-such-folder"},
     "engine cpu: no-such-folder is not a Hugging Face model folder (no config.json)"),
    ({"name": "m", "engine": "cpu", "model_path": ".", "options": {"dtype": "bf16"}},
     "unknown cpu option 'dtype' (engine cpu takes none)"),
])
def test_bad_engine_entries_are_usage_errors(pytester, entry, message):
    write_suite(pytester.path / "evals", "geo", answer_cases([("c1", "a", "a")]))
    (pytester.path / "models.yaml").write_text(yaml.safe_dump([entry]))
    result = pytester.runpytest_inprocess("--llm-models-file", "models.yaml", "--llm-cache", "off", "evals")
    assert result.ret != 0
    assert message in result.stdout.str() + result.stderr.str()


def test_engine_cpu_keys_the_cache_by_the_folders_files(tmp_path):
    """New weights or a new tokenizer in the same folder are another model for the response cache; a copy of
    the folder is not. The report's weights_sha256 is the weights' alone."""
    from harness.engines.cpu_engine import CPUEngine
    from harness.models import ModelSpec

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights one")
    (folder / "tokenizer_config.json").write_text("{}")
    def engine() -> CPUEngine:  # one per run: the folder as that run found it
        return CPUEngine(ModelSpec("m", engine="cpu", model_path=str(folder)))

    first, weights = engine().identity(), engine().metadata(None)["weights_sha256"]
    assert set(first) == {"name", "engine", "files_sha256"} and first["engine"] == "cpu"
    (folder / "tokenizer_config.json").write_text('{"chat_template": "{{ messages }}"}')
    second = engine().identity()
    assert second != first and engine().metadata(None)["weights_sha256"] == weights
    (folder / "model.safetensors").write_bytes(b"weights two")
    assert engine().identity() not in (first, second) and engine().metadata(None)["weights_sha256"] != weights
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in folder.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    assert CPUEngine(ModelSpec("m", engine="cpu", model_path=str(copy))).identity() == engine().identity()
