"""The perspective oracle against a real local HTTP server emulating the Perspective API.

The emulator decides its reply from the comment text, so each test drives a
behaviour (success, 429s, 5xx, 400, bad key) through the real urllib client;
``server.script(text, ...)`` queues replies (a status, or a delay in seconds
before answering normally) that the next requests for that text get first.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from rrtool_oracles.perspective import (
    CACHE_FILE,
    CACHE_TABLE,
    OracleError,
    PerspectiveOracle,
    TokenBucket,
    endpoint_id,
)

from rrtool.oracles.contract import Oracle, Requirements, Sample
from tests.conftest import tiny_spec

KEY = "sk-test-S3CR3T+key/42"  # '+' and '/' so a URL-encoded leak would be caught too
KEY_ENV = "RRTOOL_TEST_PERSPECTIVE_KEY"


class _Emulator(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict[str, Any]] = []
        self.scripts: dict[str, deque[int | float]] = {}
        self.lock = threading.Lock()
        self.toxicity: float | None = None  # answer this for every text (else by the text)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1alpha1/comments:analyze"

    def script(self, text: str, *replies: int | float) -> None:
        """Queue replies for ``text``: an int is an HTTP status, a float a delay (seconds)."""
        self.scripts.setdefault(text, deque()).extend(replies)

    def texts(self) -> list[str]:
        return [r["body"]["comment"]["text"] for r in self.requests]

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and hung up is expected, not a test failure


class _Handler(BaseHTTPRequestHandler):
    server: _Emulator

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # keep test output clean

    def _reply(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        url = urllib.parse.urlsplit(self.path)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = body["comment"]["text"]
        with self.server.lock:
            self.server.requests.append(
                {
                    "path": url.path,
                    "query": urllib.parse.parse_qs(url.query),
                    "content_type": self.headers["Content-Type"],
                    "body": body,
                    "at": time.monotonic(),
                }
            )
            queued = self.server.scripts.get(text)
            action = queued.popleft() if queued else None
        if isinstance(action, float):
            time.sleep(action)  # slower than the client's timeout: it has hung up by now
            action = None
        if urllib.parse.parse_qs(url.query).get("key") != [KEY]:
            self._reply(
                400,
                {
                    "error": {
                        "code": 400,
                        "message": "API key not valid. Please pass a valid API key.",
                        "status": "INVALID_ARGUMENT",
                        "details": [{"reason": "API_KEY_INVALID"}],
                    }
                },
            )
        elif action == 429 and text.startswith("slow"):
            self._reply(429, {"error": {"code": 429}}, {"Retry-After": "0.3"})
        elif action == 429:
            self._reply(429, {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED"}})
        elif action is not None:
            self._reply(action, {"error": {"code": action, "status": "INTERNAL"}})
        elif text.startswith("broken"):
            # A hostile/buggy upstream that echoes the full request URL, key included.
            self._reply(503, {"error": {"message": f"backend down for {self.path}"}})
        elif text.startswith("klingon"):
            self._reply(
                400,
                {
                    "error": {
                        "code": 400,
                        "message": f"Attribute TOXICITY does not support request languages: "
                        f"tlh (request was {self.path})",
                        "status": "INVALID_ARGUMENT",
                    }
                },
            )
        elif text.startswith("forbidden"):
            self._reply(403, {"error": {"code": 403, "status": "PERMISSION_DENIED"}})
        elif text.startswith("garbled"):
            self._reply(200, {"attributeScores": {"TOXICITY": {}}})
        else:
            toxicity = self.server.toxicity
            if toxicity is None:
                toxicity = 0.95 if "idiot" in text else 0.05
            self._reply(
                200,
                {
                    "attributeScores": {
                        "TOXICITY": {"summaryScore": {"value": toxicity, "type": "PROBABILITY"}},
                        "SEVERE_TOXICITY": {"summaryScore": {"value": toxicity / 2}},
                    },
                    "languages": ["en"],
                },
            )


@pytest.fixture(autouse=True)
def _private_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Each test gets its own default cache directory (conftest shares one per session)."""
    cache = tmp_path / "rrtool-cache"
    monkeypatch.setenv("RRTOOL_CACHE_DIR", str(cache))
    return cache / "perspective"


@contextmanager
def _serving() -> Iterator[_Emulator]:
    """An emulator answering on loopback from a thread until the block ends."""
    emulator = _Emulator()
    thread = threading.Thread(target=emulator.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield emulator
    finally:
        emulator.shutdown()
        emulator.server_close()
        thread.join(timeout=5)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Emulator]:
    # A proxy from the environment would swallow requests meant for 127.0.0.1.
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv(KEY_ENV, KEY)
    with _serving() as emulator:
        yield emulator


def _oracle(server: _Emulator, **options: Any) -> PerspectiveOracle:
    defaults: dict[str, Any] = {
        "url": server.url,
        "api_key_env": KEY_ENV,
        "qps": 1000.0,
        "base_delay": 0.01,
        "max_retries": 3,
        "timeout": 5.0,
    }
    return PerspectiveOracle(**{**defaults, **options})


def _samples(*texts: str, prompt: str = "p") -> list[Sample]:
    return [Sample(id=f"s{i}", prompt=prompt, completion=t) for i, t in enumerate(texts)]


def test_satisfies_contract() -> None:
    oracle = PerspectiveOracle()
    assert isinstance(oracle, Oracle)
    assert oracle.name == "perspective"
    assert "\n" not in PerspectiveOracle.description
    assert PerspectiveOracle.requires == Requirements(
        network=True, api_key_env="PERSPECTIVE_API_KEY", target_kinds=("toxicity",)
    )
    # A custom variable is what the planner must check.
    assert PerspectiveOracle(api_key_env="MY_KEY").requires.api_key_env == "MY_KEY"


def test_success_and_request_shape(server: _Emulator) -> None:
    oracle = _oracle(server)
    scores = oracle.score(_samples("you idiot", "nice day"))
    assert [s.score for s in scores] == [0.95, 0.05]
    assert scores[0].details == {
        "scorer": "perspective",
        "toxicity": 0.95,
        "severe_toxicity": 0.475,
    }
    request = server.requests[0]
    assert request["path"] == "/v1alpha1/comments:analyze"
    assert request["query"] == {"key": [KEY]}
    assert request["content_type"] == "application/json"
    assert request["body"] == {
        "comment": {"text": "you idiot"},
        "requestedAttributes": {"TOXICITY": {}, "SEVERE_TOXICITY": {}},
        "languages": ["en"],
        "doNotStore": True,
    }


def test_empty_text_is_never_sent(
    server: _Emulator, monkeypatch: pytest.MonkeyPatch, _private_cache: Path
) -> None:
    monkeypatch.delenv(KEY_ENV)  # no key needed when nothing is sent
    oracle = _oracle(server)
    samples = _samples("", "  \n\t")
    scores = oracle.score(samples)
    assert [s.score for s in scores] == [0.0, 0.0]
    assert all(s.details["empty"] is True for s in scores)
    assert server.requests == []
    assert not _private_cache.exists()  # nothing to cache: no file either
    metrics = oracle.aggregate(samples, scores)
    assert metrics["requested"] == 0.0 and "coverage" not in metrics


def test_coverage_counts_only_nonempty_samples(server: _Emulator) -> None:
    oracle = _oracle(server)
    samples = _samples("you idiot", "", "klingon text", "nice", "klingon again")
    metrics = oracle.aggregate(samples, oracle.score(samples))
    assert metrics["requested"] == 4.0
    assert metrics["coverage"] == 0.5


def test_cache_by_text(server: _Emulator) -> None:
    oracle = _oracle(server, cache_dir=None)  # the in-memory cache alone
    first = oracle.score(_samples("same text", "same text", "other"))
    second = oracle.score(_samples("same text"))
    assert server.texts() == ["same text", "other"]
    assert first[0] == first[1] == second[0]


def test_disk_cache_survives_a_new_instance(server: _Emulator, _private_cache: Path) -> None:
    samples = _samples("you idiot", "nice day", "klingon text")
    first = _oracle(server).score(samples)
    assert len(server.requests) == 3
    assert (_private_cache / CACHE_FILE).is_file()  # default: $RRTOOL_CACHE_DIR/perspective
    again = _oracle(server)  # a new instance, as in a rerun; scored texts cost nothing
    assert again.score(samples[:2]) == first[:2]
    assert len(server.requests) == 3
    # A refusal is not persisted: a later run asks again.
    assert again.score(samples[2:]) == first[2:]
    assert len(server.requests) == 4


def test_disk_cache_is_shared_through_cache_dir_and_keyed_by_text(
    server: _Emulator, tmp_path: Path
) -> None:
    shared = tmp_path / "shared cache"
    _oracle(server, cache_dir=str(shared)).score(_samples("one", "two"))
    other = _oracle(server, cache_dir=shared, api_key_env="UNSET_BUT_NOT_NEEDED")
    assert [s.score for s in other.score(_samples("two", "one"))] == [0.05, 0.05]
    assert server.texts() == ["one", "two"]
    _oracle(server, cache_dir=None).score(_samples("one"))  # disabled: asks again
    assert server.texts() == ["one", "two", "one"]
    assert not (tmp_path / "rrtool-cache").exists()  # the default location stayed unused


def test_cache_files_never_hold_the_key(server: _Emulator, _private_cache: Path) -> None:
    _oracle(server).score(_samples("you idiot", "nice", "klingon text"))
    files = [p for p in _private_cache.rglob("*") if p.is_file()]
    assert files
    db = sqlite3.connect(_private_cache / CACHE_FILE)
    rows = db.execute(f"SELECT key, endpoint, score, details FROM {CACHE_TABLE}").fetchall()
    db.close()
    assert len(rows) == 2
    assert {row[1] for row in rows} == {server.url}  # the endpoint, already normal here
    assert all("you idiot" not in repr(row) for row in rows)  # hashed, not the text
    for path in files:
        data = path.read_bytes()
        for form in (KEY, urllib.parse.quote(KEY, safe=""), urllib.parse.quote_plus(KEY)):
            assert form.encode() not in data


def test_disk_cache_is_keyed_by_endpoint(server: _Emulator, tmp_path: Path) -> None:
    """Two endpoints (say a test double and the real API) score the same text differently:
    each endpoint's scores come back from the shared cache file, never the other's."""
    cache = tmp_path / "cache"
    text = _samples("the same words")
    server.toxicity = 0.25
    with _serving() as other:
        other.toxicity = 0.75
        via_a = _oracle(server, cache_dir=cache).score(text)
        via_b = _oracle(other, cache_dir=cache).score(text)
        assert [s.score for s in via_a] == [0.25] and [s.score for s in via_b] == [0.75]
        assert server.texts() == other.texts() == ["the same words"]  # B was asked too
        # Both answers are cached, each under its endpoint: new instances ask nobody.
        assert _oracle(server, cache_dir=cache).score(text) == via_a
        assert _oracle(other, cache_dir=cache).score(text) == via_b
        assert server.texts() == other.texts() == ["the same words"]
        # The same endpoint spelt otherwise (scheme and host case, a fragment) is the same.
        respelt = server.url.replace("http://127.0.0.1", "HTTP://127.0.0.1") + "#frag"
        assert _oracle(server, url=respelt, cache_dir=cache).score(text) == via_a
        assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://commentanalyzer.googleapis.com/v1alpha1/comments:analyze",
         "https://commentanalyzer.googleapis.com/v1alpha1/comments:analyze"),
        ("HTTPS://User:Secret@Proxy.Example:443/analyze?key=k1&tenant=a#x",
         "https://proxy.example/analyze?tenant=a"),
        ("https://staging.example:8443/analyze", "https://staging.example:8443/analyze"),
        ("http://[::1]:8080/a?key=k", "http://[::1]:8080/a"),
    ],
)  # fmt: skip
def test_endpoint_id_drops_credentials_and_spelling(url: str, expected: str) -> None:
    assert endpoint_id(url) == expected


def test_rows_of_the_endpoint_blind_cache_are_not_served(
    server: _Emulator, _private_cache: Path
) -> None:
    """A cache written before the endpoint was part of the key (table ``scores``, key =
    SHA-256 of text, attributes, languages) may hold another endpoint's scores: not used."""
    import hashlib

    _private_cache.mkdir(parents=True)
    old_key = hashlib.sha256(
        json.dumps(["you idiot", ["SEVERE_TOXICITY", "TOXICITY"], ["en"]]).encode()
    ).hexdigest()
    with sqlite3.connect(_private_cache / CACHE_FILE) as db:
        db.execute(
            "CREATE TABLE scores (key TEXT PRIMARY KEY, score REAL NOT NULL,"
            " details TEXT NOT NULL, created REAL NOT NULL)"
        )
        db.execute(
            "INSERT INTO scores VALUES (?, 0.5, ?, 0)",
            (old_key, json.dumps({"scorer": "perspective", "toxicity": 0.5})),
        )
    db.close()
    scores = _oracle(server).score(_samples("you idiot"))
    assert [s.score for s in scores] == [0.95]  # this endpoint's answer, not the old row's
    assert server.texts() == ["you idiot"]


@pytest.mark.parametrize("status", [429, 500])
def test_transient_errors_are_retried_then_succeed(server: _Emulator, status: int) -> None:
    server.script("you idiot", status, status)  # 429,429,200 and 500,500,200
    scores = _oracle(server).score(_samples("you idiot"))
    assert scores[0].score == 0.95
    assert server.texts() == ["you idiot"] * 3


def test_slow_reply_beyond_timeout_is_retried(server: _Emulator) -> None:
    server.script("take your time", 1.0)  # first reply after 1 s; the client waits 0.2 s
    start = time.monotonic()
    scores = _oracle(server, timeout=0.2).score(_samples("take your time"))
    assert time.monotonic() - start < 0.9  # gave up on the slow reply, did not wait it out
    assert scores[0].score == 0.05
    assert server.texts() == ["take your time"] * 2


def test_slow_replies_exhausting_retries_raise(server: _Emulator) -> None:
    server.script("never on time", 0.5, 0.5)
    with pytest.raises(OracleError, match=r"gave up after 2 .*timeout"):
        _oracle(server, timeout=0.1, max_retries=1).score(_samples("never on time"))


def test_retry_after_is_honoured(server: _Emulator) -> None:
    server.script("slow one", 429)
    _oracle(server).score(_samples("slow one"))
    first, second = server.requests
    assert second["at"] - first["at"] >= 0.25  # Retry-After: 0.3 beats base_delay 0.01


def test_backoff_grows_exponentially(server: _Emulator) -> None:
    server.script("busy x", 429, 429, 429)
    _oracle(server, base_delay=0.05).score(_samples("busy x"))
    at = [r["at"] for r in server.requests]
    gaps = [b - a for a, b in zip(at, at[1:], strict=False)]
    # base * 2**attempt (+ jitter in [0, base)): >= 0.05, 0.1, 0.2
    assert gaps[0] >= 0.045 and gaps[1] >= 0.095 and gaps[2] >= 0.195


def test_exhausted_retries_raise_without_leaking_key(
    server: _Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    oracle = _oracle(server, max_retries=2)
    with caplog.at_level(logging.DEBUG), pytest.raises(OracleError) as info:
        oracle.score(_samples("broken thing"))
    assert isinstance(info.value, RuntimeError)
    assert len(server.requests) == 3  # 1 try + 2 retries
    message = str(info.value)
    assert "gave up after 3" in message and "503" in message
    _assert_no_key(message, repr(info.value), caplog.text)
    assert "***" in message  # the echoed URL was redacted, not dropped silently
    assert info.value.__cause__ is None and info.value.__context__ is None


def test_429_exhaustion_is_an_error_not_a_zero(server: _Emulator) -> None:
    server.script("busy forever", *[429] * 100)
    with pytest.raises(OracleError, match="429"):
        _oracle(server, max_retries=1).score(_samples("nice", "busy forever"))


def test_400_is_recorded_and_excluded_from_aggregates(server: _Emulator) -> None:
    oracle = _oracle(server)
    samples = _samples("you idiot", "klingon text") + _samples("nice", prompt="q")
    scores = oracle.score(samples)
    bad = scores[1]
    assert "does not support request languages" in bad.details["error"]
    assert bad.details["status"] == 400
    _assert_no_key(repr(bad.details))
    assert len(server.requests) == 3  # a permanent error is not retried
    metrics = oracle.aggregate(samples, scores)
    assert metrics["errors"] == 1.0
    assert metrics["samples"] == 2.0
    assert metrics["requested"] == 3.0
    assert metrics["coverage"] == pytest.approx(2 / 3)
    assert metrics["mean"] == pytest.approx((0.95 + 0.05) / 2)
    assert metrics["expected_max_toxicity"] == pytest.approx((0.95 + 0.05) / 2)
    assert metrics["toxicity_rate"] == 0.5
    assert metrics["severe_rate"] == 0.5


def test_rejected_key_fails_the_run(server: _Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = "sk-wrong-key-777"
    monkeypatch.setenv(KEY_ENV, wrong)
    with pytest.raises(OracleError, match=KEY_ENV) as info:
        _oracle(server).score(_samples("hello"))
    assert wrong not in str(info.value)


def test_missing_key_names_the_variable(server: _Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(OracleError, match=KEY_ENV):
        _oracle(server).score(_samples("hello"))
    assert server.requests == []


@pytest.mark.parametrize("text", ["forbidden", "garbled"])
def test_other_failures_raise(server: _Emulator, text: str) -> None:
    with pytest.raises(OracleError) as info:
        _oracle(server).score(_samples(text))
    assert len(server.requests) == 1  # neither is worth retrying
    _assert_no_key(str(info.value))


def test_unreachable_server_is_retried_then_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    probe = _Emulator()  # bind, note the port, close: nothing listens there afterwards
    url = probe.url
    probe.server_close()
    oracle = PerspectiveOracle(
        url=url, api_key_env=KEY_ENV, qps=1000.0, base_delay=0.0, max_retries=1
    )
    with pytest.raises(OracleError, match="network error") as info:
        oracle.score(_samples("hello"))
    _assert_no_key(str(info.value))


def test_token_bucket_spaces_requests(server: _Emulator) -> None:
    _oracle(server, qps=20.0).score(_samples("a", "b", "c", "d", "e"))
    at = [r["at"] for r in server.requests]
    gaps = [b - a for a, b in zip(at, at[1:], strict=False)]
    # Burst 1: the first request goes at once, each later one waits for a token (1/20 s).
    assert len(gaps) == 4 and min(gaps) >= 0.05 * 0.8, gaps
    assert at[-1] - at[0] >= 4 * 0.05 * 0.95


def test_token_bucket_retries_spend_tokens_and_idle_time_refills_only_one() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    bucket = TokenBucket(2.0, burst=1.0, clock=lambda: now[0], sleep=sleep)
    assert bucket.acquire() == 0.0  # starts full
    assert bucket.acquire() == pytest.approx(0.5)
    now[0] += 10.0  # a long pause refills one token, not twenty
    assert bucket.acquire() == 0.0
    assert bucket.acquire() == pytest.approx(0.5)
    assert slept == [pytest.approx(0.5)] * 2


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"url": "http://example.com/analyze"}, ValueError),  # key in clear text
        ({"url": "ftp://127.0.0.1/x"}, ValueError),
        ({"url": "https://example.com:port/analyze"}, ValueError),
        ({"url": 3}, TypeError),
        ({"endpoint": "https://example.com/analyze"}, TypeError),  # renamed to url
        ({"cache_dir": 3}, TypeError),
        ({"cache_dir": ""}, TypeError),
        ({"timeout": 0}, ValueError),
        ({"api_key_env": "not a var"}, ValueError),
        ({"qps": 0}, ValueError),
        ({"max_retries": -1}, ValueError),
        ({"max_retries": 2.5}, ValueError),
        ({"base_delay": -1}, ValueError),
        ({"threshold": 2}, ValueError),
        ({"api_key": "inline"}, TypeError),
    ],
)
def test_invalid_options_rejected(options: dict, error: type[Exception]) -> None:
    with pytest.raises(error):
        PerspectiveOracle(**options)


def _assert_no_key(*texts: str) -> None:
    for form in (KEY, urllib.parse.quote(KEY, safe=""), urllib.parse.quote_plus(KEY)):
        for text in texts:
            assert form not in text


def test_a_whole_run_and_its_reports_never_hold_the_key(
    server: _Emulator, invoke, write_spec, tmp_path: Path
) -> None:
    """The key is used for every score of a real run (tiny model, toxicity target), then the
    MLflow store (database and artifacts), the scratch directory, the reports in every format
    and everything the commands printed are searched for it, plain and URL-encoded."""
    spec = tiny_spec(
        target={"kind": "toxicity", "description": "Toxic continuations"},
        oracle={
            "name": "perspective",
            "options": {"url": server.url, "api_key_env": KEY_ENV, "qps": 1000.0},
        },
        reveal={
            "strategy": "direct",
            "contexts": {"path": "builtin:toxicity_prompts", "format": "rtp", "limit": 4},
            "generation": {"max_new_tokens": 4},
        },
        retain={"data": {"path": "builtin:wiki_text", "format": "text", "limit": 8}},
        release={"iterations": 1, "lora": {"epochs": 1}, "search": {"budget": 2, "eval_size": 2}},
        audit={"eval_size": 2, "toxicity_samples": 2, "probes": {"elicitation": True}},
    )
    outputs = []
    result = invoke("run", write_spec(spec))
    outputs.append(result.output)
    assert result.exit_code == 0, result.output
    assert len(server.requests) > 0  # the key was really used
    assert all(r["query"]["key"] == [KEY] for r in server.requests)
    for fmt in ("html", "md", "json"):
        result = invoke("audit", "--report", fmt, "--out", tmp_path / f"report.{fmt}")
        outputs.append(result.output)
        assert result.exit_code == 0, result.output
    outputs.append(invoke("runs", "--json").output)

    leaks = {KEY.encode(), urllib.parse.quote(KEY, safe="").encode(), KEY.split("+")[1].encode()}
    searched = 0
    for path in tmp_path.rglob("*"):
        if path.is_file():
            searched += 1
            data = path.read_bytes()
            assert not any(leak in data for leak in leaks), f"the key is in {path}"
    assert searched > 20  # the store, its artifacts and the reports were there to search
    assert (tmp_path / "mlflow.db").is_file() and (tmp_path / "report.html").is_file()
    for output in outputs:
        assert not any(leak.decode() in output for leak in leaks)
