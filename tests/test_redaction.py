"""Secrets in base URLs: sent as credentials, never written to a report, a message or the terminal."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import zipfile
from pathlib import Path

import pytest

from harness.engines.client import OpenAICompatClient, Request
from harness.engines.managed import free_port
from harness.redact import redact_data, redact_text, redact_url, split_credentials
from tests.conftest import load_report, stub_server, stub_stats, write_suite

PASSWORD = "pw-7Hq2xZ"
TOKEN = "tok-93KfA1"


@pytest.mark.parametrize("url, redacted", [
    ("http://user:pw@127.0.0.1:8000/v1", "http://***@127.0.0.1:8000/v1"),
    ("https://only-user@host/v1", "https://***@host/v1"),
    ("http://u:p%40ss@h/v1?api_key=abc&api-version=2024", "http://***@h/v1?api_key=***&api-version=2024"),
    ("http://h/v1?key=k1&token=t2&model=m#access_token=z", "http://h/v1?key=***&token=***&model=m#access_token=***"),
    ("http://h/v1?API_KEY=x", "http://h/v1?API_KEY=***"),
    ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
    ("http://h/v1?keys=1&monkey=2", "http://h/v1?keys=1&monkey=2"),
    ("not a url", "not a url"),
])
def test_redact_url(url, redacted):
    assert redact_url(url) == redacted


def test_redact_text_finds_urls_and_secrets():
    text = ("connect http://u:s3cret-pw@a:1/v1,http://u:s3cret-pw@b:2/v1 failed (key s3cret-pw, "
            "quoted s3cret-pw%21) see 'https://h/x?token=zz'")
    out = redact_text(text, ["s3cret-pw", "s3cret-pw!"])
    assert "s3cret" not in out and "zz" not in out
    assert "http://***@a:1/v1,http://***@b:2/v1" in out and "'https://h/x?token=***'" in out
    assert redact_text("a pw in a word", ["pw"]) == "a pw in a word"  # too short to mask outside URLs
    data = {"args": ["--llm-base-url", "http://u:longsecret@h/v1"], "n": 3, "nested": [{"msg": "longsecret"}]}
    assert redact_data(data, ["longsecret"]) == {"args": ["--llm-base-url", "http://***@h/v1"], "n": 3,
                                                 "nested": [{"msg": "***"}]}


def test_split_credentials_unquotes_them():
    assert split_credentials("http://us%20er:p%40ss@h:1/v1?x=1") == ("http://h:1/v1?x=1", ("us er", "p@ss"))
    assert split_credentials("http://h/v1") == ("http://h/v1", None)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def sha(header: str) -> str:
    return hashlib.sha256(header.encode()).hexdigest()


def test_client_sends_url_credentials_as_basic_auth_and_never_shows_them(stub_url):
    host = stub_url.removeprefix("http://")
    dead = f"http://user:{PASSWORD}@127.0.0.1:{free_port()}/v1?api_key={TOKEN}"

    async def go():
        client = OpenAICompatClient([f"http://user:{PASSWORD}@{host}?api_key={TOKEN}", dead], api_key="sk-other-key",
                                    retries=0)
        try:
            assert all(PASSWORD not in url for url in client.base_urls)
            message = [{"role": "user", "content": "ANSWER: fine"}]
            return [await client.send(Request("chat", "stub", message)) for _ in range(4)]
        finally:
            await client.close()

    replies = asyncio.run(go())
    answered = [r for r in replies if r.error is None]
    failed = [r for r in replies if r.error is not None]
    assert answered and all(r.text == "fine" for r in answered)
    assert failed and all(r.error.startswith("connection error") for r in failed)  # the dead replica
    assert all(PASSWORD not in (r.error or "") + (r.replica or "") for r in replies)
    assert sha(basic("user", PASSWORD)) in stub_stats(stub_url)["auth_sha256"]  # the URL's credentials won


def file_texts(folder: Path) -> dict[str, str]:
    """Every file under a folder as text, the members of zip files (xlsx) unpacked."""
    texts = {}
    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                for name in archive.namelist():
                    texts[f"{path}!{name}"] = archive.read(name).decode("utf-8", "replace")
        else:
            texts[str(path)] = path.read_bytes().decode("utf-8", "replace")
    return texts


def test_a_run_with_url_credentials_authenticates_and_writes_no_secret(pytester, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    cases = [{"id": f"c{i}", "input": f"q{i}\nANSWER: a{i}", "target": f"a{i}"} for i in range(6)]
    cases.append({"id": "down", "input": "FAIL:500", "target": "x"})  # an error message in every report
    write_suite(pytester.path / "evals", "secret", cases, gates=["accuracy >= 0.8"], **{"pass": "record"})
    with stub_server("--models", "stub") as (_, url):
        host = url.removeprefix("http://")
        base = f"http://user:{PASSWORD}@{host}?api_key={TOKEN}"
        result = pytester.runpytest_inprocess(
            "-p", "no:cacheprovider", "--llm-base-url", base, "--llm-model", "stub", "--llm-report-dir", "out",
            "--llm-cache", "off", "--llm-retries", "1", "--llm-retry-passes", "0", "--llm-wait-ready", "10",
            "--llm-wait-interval", "0.2",
            "evals")
        auth = stub_stats(url)["auth_sha256"]
    output = result.stdout.str() + result.stderr.str()
    assert result.ret == 0, output
    assert sha(basic("user", PASSWORD)) in auth  # every request carried the URL's credentials
    report = load_report(pytester)
    by_id = {case["id"]: case for case in report["cases"]}
    assert all(by_id[f"c{i}"]["score"] == 1.0 for i in range(6))
    assert by_id["down"]["error"].startswith("HTTP 500")
    # the report still says where the model was, without the secrets
    engine = report["run"]["models"][0]["engine"]
    assert engine["base_urls"][0] == f"http://***@{host}?api_key=***"
    assert any("http://***@" in arg for arg in report["run"]["pytest_args"])
    secrets = [PASSWORD, TOKEN, base64.b64encode(f"user:{PASSWORD}".encode()).decode()]
    files = file_texts(pytester.path / "out")
    assert {"report.json", "report.md", "report.xlsx"} <= {Path(name.split("!")[0]).name for name in files}
    leaks = [(name, secret) for name, text in files.items() for secret in secrets if secret in text]
    assert not leaks
    assert not [secret for secret in secrets if secret in output]


def test_a_refused_login_names_the_server_without_its_secrets(pytester, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    write_suite(pytester.path / "evals", "refused", [{"id": "a", "input": "ANSWER: a", "target": "a"}])
    with stub_server("--models", "stub", "--api-key", "the-right-key") as (_, url):  # wants a bearer key: Basic credentials get a 401
        host = url.removeprefix("http://")
        result = pytester.runpytest_inprocess(
            "-p", "no:cacheprovider", "--llm-base-url", f"http://user:{PASSWORD}@{host}?token={TOKEN}",
            "--llm-model", "stub", "--llm-report-dir", "out", "--llm-cache", "off", "evals")
    output = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR, output
    assert f"at {url}?token=*** refused the request (HTTP 401" in output
    assert PASSWORD not in output and TOKEN not in output
