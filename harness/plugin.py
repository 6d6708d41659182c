"""The pytest plugin: options, hooks and fixtures. Thin: the work lives in the modules it calls.

Loaded through the `pytest11` entry point wherever the package is installed, so importing it
must stay cheap: no torch, transformers or openpyxl here.
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path
from typing import Any, Generator

import pytest

from harness.collect import CaseItem, GateItem, JsonlFile, SuiteFile, is_suite_dataset, is_suite_file
from harness.run import STATE_KEY, WORKERINPUT_KEY, RunState, Settings, run_state

GC_KEY = pytest.StashKey[bool]()
GC_CLEANUP_KEY = pytest.StashKey[bool]()  # _restore_gc is registered as a cleanup
REPORTED_KEY = pytest.StashKey[bool]()  # an item's run protocol made at least one report


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("llm", "LLM evaluation (pytest-llm-harness)")

    def option(name: str, help: str, default: Any = None, type: str = "string", **kwargs: Any) -> None:
        ini = "llm_" + name.replace("-", "_")
        group.addoption(f"--llm-{name}", dest=ini, default=None, help=f"{help} (ini: {ini})", **kwargs)
        parser.addini(ini, help=help, type=type, default=default)

    option("model", "model to evaluate; repeat for a side-by-side comparison (default: the bundled "
           "gemma-3-270m)", action="append", default=[], type="args")
    option("models-file", "YAML list of models: name, base_url, api_key_env")
    option("base-url", "OpenAI-compatible server for the --llm-model models, e.g. http://127.0.0.1:8000/v1")
    option("api-key-env", "environment variable holding the API key", default="OPENAI_API_KEY")
    option("concurrency", "requests in flight for the whole run", default="16")
    option("timeout", "seconds per request attempt", default="300")
    option("retries", "retries of a request after a timeout, 429, 5xx or connection error", default="2")
    option("deadline", "seconds a request may take in all, attempts and waits included (0: no limit)",
           default="900")
    option("retry-passes", "passes that re-send transiently failed requests after the main pass", default="1")
    group.addoption("--llm-stream", dest="llm_stream", action="store_true", default=None,
                    help="stream replies, for time to first token and time per output token (ini: llm_stream)")
    parser.addini("llm_stream", help="stream replies (TTFT, TPOT)", type="bool", default=False)
    option("gpus", "GPU indices for engines the harness starts, e.g. 0,1 (default: most free memory)")
    option("engine-timeout", "seconds to wait for a managed engine to list its model", default="900")
    option("wait-ready", "seconds to wait for a remote server to list the model before the first request "
           "(0: no wait)", default="0")
    option("wait-interval", "seconds between those checks", default="5")
    option("max-batch", "batch size of the bundled CPU engine", default="16")
    option("cache", "response cache: off, read, write or read-write", default="read-write",
           choices=["off", "read", "write", "read-write"])
    option("cache-path", "response cache file (default: ~/.cache/pytest-llm-harness/responses.sqlite)")
    option("report-dir", "write reports to this folder (default: reports/<run id>, with reports/latest)")
    parser.addini("llm_reports", "base folder of run reports", default="reports")
    option("reference", "in a run of several models, the model the others are compared against "
           "(default: the first)")
    option("baseline", "compare this run against a baseline file saved by an earlier run "
           "(--llm-baseline-save)")
    option("baseline-save", "save this run as a baseline file (per-case rows and fingerprints) at PATH")
    option("baseline-reason", "why the baseline is saved (required with --llm-baseline-save; kept in the file)")
    option("audit", "determinism audit: re-send K cases of each suite with the cache off and fail a gate "
           "whose outcome flips (0: off)", default="0")
    group.addoption("--llm-set", dest="llm_set", action="append", default=[], metavar="KEY=VALUE",
                    help="a generation setting for every suite (temperature, max_tokens, top_p, seed, stop), "
                         "e.g. --llm-set temperature=0.7; repeatable (ini: llm_set, one per line)")
    parser.addini("llm_set", "generation settings for every suite, KEY=VALUE per line", type="linelist", default=[])
    option("limit", "quick run: the first N cases of each suite")
    option("sample", "quick run: a random sample of each suite, N cases, or a share: a number and a percent sign")
    option("seed", "the seed of --llm-sample (the same seed draws the same cases)", default="0")
    option("judge-model", "the model that grades judge-scored suites whose scorer names no model: a model of "
           "the run, a models-file entry (role: judge serves judging only), or the bundled gemma-3-270m")
    parser.addini("llm_allow_imports", "module prefixes a suite file may import (classifier: 'pkg.mod:attr') "
                  "besides the project's own modules under the rootdir", type="args", default=[])
    option("progress", "seconds between live progress lines on the terminal (-q: three times that; -qq or 0: "
           "none); progress.log in the report folder gets one every 5 s", default="10")
    option("known-failures", "ledger of cases known to fail (YAML list or CSV of suite, id, reason, model?; "
           "relative to the rootdir): they run as xfail(strict=True)")


def _value(config: pytest.Config, name: str) -> Any:
    cli = config.getoption(name)
    return cli if cli not in (None, []) else config.getini(name)


# each numeric setting's least value (strict: the value itself excluded); 0 turns off the deadline and progress
_BOUNDS = (("concurrency", 1, False), ("timeout_s", 0, True), ("retries", 0, False), ("engine_timeout_s", 0, True),
           ("max_batch", 1, False), ("wait_ready_s", 0, False), ("wait_interval_s", 0, True), ("deadline_s", 0, False),
           ("retry_passes", 0, False), ("progress_s", 0, False))


def _settings(config: pytest.Config) -> Settings:
    try:
        settings = Settings(
            concurrency=int(_value(config, "llm_concurrency")),
            timeout_s=float(_value(config, "llm_timeout")),
            retries=int(_value(config, "llm_retries")),
            engine_timeout_s=float(_value(config, "llm_engine_timeout")),
            max_batch=int(_value(config, "llm_max_batch")),
            wait_ready_s=float(_value(config, "llm_wait_ready")),
            wait_interval_s=float(_value(config, "llm_wait_interval")),
            cache_mode=str(_value(config, "llm_cache")),
            cache_path=str(_value(config, "llm_cache_path") or ""),
            deadline_s=float(_value(config, "llm_deadline")),
            retry_passes=int(_value(config, "llm_retry_passes")),
            stream=bool(_value(config, "llm_stream")),
            judge_model=str(_value(config, "llm_judge_model") or "").strip(),
            progress_s=float(_value(config, "llm_progress")),
            generation_set=_generation_set(list(config.getini("llm_set")) + list(config.getoption("llm_set") or [])),
        )
    except ValueError as exc:
        raise pytest.UsageError(f"llm-harness: bad numeric option: {exc}") from exc
    for name, least, strict in _BOUNDS:
        value = getattr(settings, name)
        if value < least or (strict and value == least):
            option = name.removesuffix("_s").replace("_", "-")
            raise pytest.UsageError(f"llm-harness: --llm-{option} (ini llm_{option.replace('-', '_')}) takes a number "
                                    f"{'>' if strict else '>='} {least:g}, not {value:g}")
    from harness.cache import MODES

    if settings.cache_mode not in MODES:
        raise pytest.UsageError(f"llm-harness: llm_cache must be one of {', '.join(MODES)}")
    return settings


def _check_report_folder(config: pytest.Config) -> None:
    """Where the reports go must be a folder or not exist yet: a file on that path would cost the run its reports
    only at its end, after every request."""
    option = config.getoption("llm_report_dir")
    where, raw = ("--llm-report-dir", option) if option else ("llm_reports", config.getini("llm_reports"))
    if raw:  # the ini key is the base folder of every run's folder; the option, the one folder it replaces
        path = Path(raw) if Path(raw).is_absolute() else config.rootpath / raw
        found = next((p for p in (path, *path.parents) if p.exists()), None)
        if found is not None and not found.is_dir():
            raise pytest.UsageError(f"llm-harness: {where} {raw}: {found} is a file, not a folder")


def _generation_set(items: list[str]) -> dict[str, Any]:
    """--llm-set key=value (YAML values: 0.7 is a number, [a, b] a list); later ones win."""
    import yaml

    from harness.suite import GENERATION_KEYS, generation_problem

    settings: dict[str, Any] = {}
    for item in items:
        key, sep, raw = str(item).partition("=")
        key = key.strip()
        if not sep or key not in GENERATION_KEYS:
            raise pytest.UsageError(f"llm-harness: --llm-set takes KEY=VALUE with KEY one of "
                                    f"{', '.join(GENERATION_KEYS)}, not {item!r}")
        try:
            settings[key] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise pytest.UsageError(f"llm-harness: --llm-set {item!r}: not a value: {exc}") from exc
        if (problem := generation_problem(key, settings[key])) is not None:
            raise pytest.UsageError(f"llm-harness: --llm-set {item!r}: {key} {problem}")
    return settings


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from harness import hookspec

    pluginmanager.add_hookspecs(hookspec)


def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    # Cleanups run last registered first: this one, registered before any plugin's pytest_configure,
    # runs after them all, pytest's own end-of-run gc.collect() calls (unraisableexception: five of them)
    # included, which then skip the frozen items instead of scanning every collected item five times.
    _add_gc_cleanup(early_config)


def _add_gc_cleanup(config: pytest.Config) -> None:
    if GC_CLEANUP_KEY not in config.stash:
        config.stash[GC_CLEANUP_KEY] = True
        config.add_cleanup(functools.partial(_restore_gc, config))


def _restore_gc(config: pytest.Config) -> None:
    """Give the user's process its collector back (pytest_collection froze what was collected)."""
    if GC_KEY in config.stash:
        import gc

        gc.unfreeze()
        del config.stash[GC_KEY]
        _skip_collection_at_exit()


@functools.cache  # registered once per process
def _skip_collection_at_exit() -> None:
    """At interpreter exit, freeze every object so that CPython's final collections skip them.

    Those collections scan the whole heap (the run's items, reports and every library loaded): 0.4 s of
    a 1,000-case run's exit on this machine kind, after the last reply. They only free what the exit frees
    anyway; CPython does not promise that finalizers of objects in reference cycles run at exit. Registered
    after the run, so the collector is the user's until the interpreter stops."""
    import atexit
    import gc

    atexit.register(gc.freeze)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "llm_eval: an eval case collected from a JSONL suite")
    config.addinivalue_line("markers", "llm_gate: a quality gate judged on a whole suite")
    config.addinivalue_line("markers", "llm_robustness: a perturbed copy of an eval case, or a gate on the "
                            "copies (robustness suites)")
    config.addinivalue_line("markers", "llm_training: a gate of a training job (job.yaml)")
    from harness.scoring.imports import configure as configure_imports

    configure_imports(config)  # every process (xdist workers too): what a suite file may import
    from harness.suite import set_root

    set_root(config.rootpath)  # every process: a suite's model.train may be relative to the rootdir
    from harness.collect import catalog

    catalog(config)  # every process: a quick run's options (--llm-limit, --llm-sample) checked before collection
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and WORKERINPUT_KEY in workerinput:
        config.stash[STATE_KEY] = RunState.from_workerinput(workerinput[WORKERINPUT_KEY])
        config.stash[STATE_KEY].hook = config.hook
        return
    from harness.engines.registry import spec_problem
    from harness.models import ModelConfigError, resolve_models

    try:
        models = resolve_models(list(_value(config, "llm_model") or []), _value(config, "llm_base_url"),
                                _value(config, "llm_api_key_env"), _value(config, "llm_models_file"),
                                config.rootpath, _value(config, "llm_gpus"),
                                lambda spec: spec_problem(spec, config.hook))
    except ModelConfigError as exc:
        raise pytest.UsageError(f"llm-harness: {exc}") from exc
    settings = _settings(config)
    _check_report_folder(config)
    from harness.judging.models import add_judge_model

    try:
        models = add_judge_model(models, settings.judge_model)
    except ValueError as exc:
        raise pytest.UsageError(f"llm-harness: {exc}") from exc
    state = RunState.new(models, settings)
    state.hook = config.hook
    config.stash[STATE_KEY] = state
    from harness.session import PLUGIN_NAME, SESSION_KEY, EvalSession

    session = EvalSession(config, state)
    config.stash[SESSION_KEY] = session
    config.pluginmanager.register(session, PLUGIN_NAME)
    from harness.slim_reports import PLUGIN_NAME as SLIM_NAME, SlimReports

    config.pluginmanager.register(SlimReports(session), SLIM_NAME)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    node.workerinput[WORKERINPUT_KEY] = run_state(node.config).to_workerinput()


@pytest.hookimpl(wrapper=True)
def pytest_collection(session: pytest.Session) -> Generator[None, Any, Any]:
    import gc

    # 100,000 items are 100,000 long-lived objects: the cyclic collector would rescan them over
    # and over while they are made (seconds), and again during the run unless they are frozen.
    # Both are undone at the end (_restore_gc): the user's process gets its collector back.
    enabled = gc.isenabled()
    session.config.stash[GC_KEY] = enabled
    gc.disable()
    try:
        return (yield)
    finally:
        if enabled:
            gc.enable()
        gc.freeze()
        # registered here when the plugin came too late for pytest_load_initial_conftests (a conftest's
        # pytest_plugins): it then runs before pytest's own cleanups, not after them
        _add_gc_cleanup(session.config)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    from harness.collect import collection_top

    # a dataset may lie below its suite's folder (data/cases.jsonl): suites are looked for upwards
    if is_suite_dataset(file_path, collection_top(parent.config)):
        return JsonlFile.from_parent(parent, path=file_path)
    if file_path.suffix in (".yaml", ".yml") and is_suite_file(file_path):
        return SuiteFile.from_parent(parent, path=file_path)
    if file_path.suffix in (".yaml", ".yml"):
        from harness.training.job import is_job_file

        if is_job_file(file_path):
            from harness.training.collect import TrainJobFile

            return TrainJobFile.from_parent(parent, path=file_path)
    return None


def pytest_collect_directory(path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    from harness.collect import MisplacedFolder
    from harness.suite import is_suite_file_name

    # a folder named suite.yaml would otherwise be entered as a plain folder, its suite gone without a word
    return MisplacedFolder.from_parent(parent, path=path) if is_suite_file_name(path) else None


def pytest_sessionstart(session: pytest.Session) -> None:
    from harness.known_failures import install

    # at session start, not collection: the xdist controller, which never collects, checks the
    # ledger too, so a malformed one is a usage error before any worker starts
    install(session.config)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # last, after any plugin that reorders items, gates go after every case: in each xdist worker's
    # queue (a subsequence of this order) no case waits behind a gate, and without xdist the cases
    # a gate judges have run when it starts
    gates = [item for item in items if isinstance(item, GateItem)]
    if gates:
        items[:] = [item for item in items if not isinstance(item, GateItem)] + gates


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, Any, Any]:
    outcome = yield
    if isinstance(item, CaseItem) and REPORTED_KEY not in item.stash:
        # another plugin ran the item without pytest's protocol and reported nothing: say so, rather
        # than leave its suite's gates waiting for a case that will never come
        report = pytest.TestReport(item.nodeid, item.location, {}, "failed",
                                   "no result: another plugin replaced this item's run protocol and reported nothing",
                                   "call")
        item.ihook.pytest_runtest_logreport(report=report)
    return outcome


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report = yield
    item.stash[REPORTED_KEY] = True
    result = getattr(item, "case_result", None)
    if call.when == "call" and result is not None:
        report.llm_case = result.to_dict()
    summary = getattr(item, "training_summary", None)  # a training gate (harness.training.collect)
    if call.when == "call" and summary is not None and (training := summary(report.passed)) is not None:
        report.llm_training = training
    if isinstance(item, (CaseItem, GateItem)) and isinstance(report.longrepr, str):
        from harness.textsafe import visible

        # the failure text quotes model output: its escape sequences must not reach the terminal
        report.longrepr = visible(report.longrepr)
    return report


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    _close_run(config)
    _freeze_for_cleanups(config)


def _freeze_for_cleanups(config: pytest.Config) -> None:
    """Collect once, then freeze what the run made, until _restore_gc: pytest's own cleanups then call
    gc.collect() five times (unraisableexception) over a heap that no longer changes, each a full scan of
    the run's reports and every library it loaded (about 0.1 s of a 1,000-case run's exit on 2 cores). The
    one collection here comes first, so garbage whose finalizer raises is still found and reported."""
    if GC_KEY in config.stash:
        import gc

        gc.collect()
        gc.freeze()


def _close_run(config: pytest.Config) -> None:
    from harness.session import SESSION_KEY

    session = config.stash.get(SESSION_KEY, None)
    if session is not None:
        session.close()
        config.pluginmanager.unregister(session)
        del config.stash[SESSION_KEY]
        from harness.slim_reports import PLUGIN_NAME as SLIM_NAME

        slimmer = config.pluginmanager.get_plugin(SLIM_NAME)
        if slimmer is not None:
            config.pluginmanager.unregister(slimmer)
    state = config.stash.get(STATE_KEY, None)
    if state is None:
        return
    state.close()
    if state.is_controller:
        from harness.engines.lease import stop_engines

        stop_engines(state.runtime_dir)
        shutil.rmtree(state.runtime_dir, ignore_errors=True)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    names = run_state(metafunc.config).model_names
    if "llm_model" in metafunc.fixturenames and len(names) > 1:
        metafunc.parametrize("llm_model", names, ids=names, scope="session")


@pytest.fixture(scope="session")
def llm_model(request: pytest.FixtureRequest) -> str:
    """The name of the model under test (parametrized over every model in a comparison run)."""
    return run_state(request.config).model_names[0]


@pytest.fixture(scope="session")
def llm_client(request: pytest.FixtureRequest, llm_model: str) -> Any:
    """The run's engine for `llm_model`, shared with the eval suites: `.chat()`, `.complete()`, async twins."""
    from harness.llm_client import LLMClient

    return LLMClient(run_state(request.config), llm_model)


@pytest.fixture(scope="session")
def llm_settings(request: pytest.FixtureRequest) -> Settings:
    """The run's request and engine settings."""
    return run_state(request.config).settings


@pytest.fixture(scope="session")
def llm_train(request: pytest.FixtureRequest) -> Any:
    """`llm_train("training/job/job.yaml") -> TrainRun` (relative to the rootdir): the job's one run in
    this pytest run, shared with its gate items and every xdist worker."""
    from functools import partial

    from harness.training.shared import train

    return partial(train, request.config)


from harness.openai_fixtures import llm_async_openai, llm_openai  # noqa: E402,F401
