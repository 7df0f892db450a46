"""A hub model id is checked at plan time against a real HTTP server on loopback that answers as
the Hugging Face hub does (its resolve route, its error headers): a model that does not exist,
a gated one, a wrong revision and a missing file are located plan errors; an existing one
brings its config.json, so the plan checks target modules and estimates memory without
weights; an unreachable hub is a note, not an error.

Each case runs in a fresh process with ``HF_ENDPOINT`` pointing at the server (huggingface_hub
reads its endpoint and offline switch at import, and the suite runs with HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from tests.conftest import tiny_spec

COMMIT = "0123456789abcdef0123456789abcdef01234567"
CONFIG = {  # a Llama-style config: the plan reads parameters and Linear names from it
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "num_key_value_heads": 2,
    "vocab_size": 512,
    "torch_dtype": "bfloat16",
}


class _Hub(BaseHTTPRequestHandler):
    """``/{owner}/{name}/resolve/{revision}/{file}``: acme/tiny exists (main only, config.json
    only); acme/gated is gated; anything else does not exist."""

    def _answer(self, body: bool) -> None:
        parts = self.path.split("?")[0].strip("/").split("/")
        repo, revision, file = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
        self.server.requests.append(self.path)  # type: ignore[attr-defined]
        error = None
        if repo == "acme/gated":
            status, error = 403, "GatedRepo"
        elif repo != "acme/tiny":
            status, error = 404, "RepoNotFound"
        elif revision not in ("main", COMMIT):
            status, error = 404, "RevisionNotFound"
        elif file != "config.json":
            status, error = 404, "EntryNotFound"
        else:
            status = 200
        payload = json.dumps(CONFIG).encode() if status == 200 else b"{}"
        self.send_response(status)
        if error:
            self.send_header("X-Error-Code", error)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", '"cafe"')
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if body:
            self.wfile.write(payload)

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's name
        self._answer(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._answer(body=True)

    def log_message(self, *args: object) -> None:  # quiet
        pass


@pytest.fixture
def hub() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    server.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _env(tmp_path: Path, endpoint: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return env | {
        "HF_ENDPOINT": endpoint,
        "HF_HUB_OFFLINE": "0",
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }


def _plan(
    tmp_path: Path, endpoint: str, model: dict, **sections: dict
) -> subprocess.CompletedProcess[str]:
    spec = tiny_spec(model=model, **sections)
    path = tmp_path / f"spec-{len(list(tmp_path.glob('spec-*')))}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return subprocess.run(
        [sys.executable, "-m", "rrtool", "plan", str(path), "--json"],
        env=_env(tmp_path, endpoint),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_an_existing_hub_model_brings_its_config_to_the_plan(
    hub: ThreadingHTTPServer, tmp_path: Path
) -> None:
    endpoint = f"http://127.0.0.1:{hub.server_port}"
    done = _plan(tmp_path, endpoint, {"id": "acme/tiny", "dtype": "float32"})
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    check = next(c for c in plan["checks"] if c["name"] == "model.id")
    assert "config.json fetched" in check["detail"]
    assert plan["resources"]["parameters"] > 0  # the estimate read the fetched config
    assert plan["resources"]["memory_gib"]["peak"] > 0
    assert any(r.startswith("/acme/tiny/resolve/main/config.json") for r in hub.requests)
    # The target modules are checked against that config, still without weights.
    wrong = _plan(
        tmp_path, endpoint, {"id": "acme/tiny"}, release={"lora": {"target_modules": ["qproj"]}}
    )
    assert wrong.returncode == 2
    assert "release.lora.target_modules[0]: `qproj` matches no Linear layer" in wrong.stderr


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ({"id": "acme/nothing"}, "no such model on the hub"),
        ({"id": "acme/gated"}, "a gated model on the hub"),
        ({"id": "acme/tiny", "revision": "v9"}, "no revision 'v9' on the hub"),
        ({"id": "acme/tiny", "gguf_file": "tiny.Q4.gguf"}, "the repository has no tiny.Q4.gguf"),
    ],
)
def test_a_hub_model_that_cannot_be_loaded_is_a_located_plan_error(
    hub: ThreadingHTTPServer, tmp_path: Path, model: dict, expected: str
) -> None:
    done = _plan(tmp_path, f"http://127.0.0.1:{hub.server_port}", model)
    assert done.returncode == 2, done.stdout + done.stderr
    assert expected in done.stderr and "model.id" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_unreachable_hub_is_a_note_not_an_error(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    done = _plan(tmp_path, f"http://127.0.0.1:{port}", {"id": "acme/tiny"})
    assert done.returncode == 0, done.stderr
    check = next(c for c in json.loads(done.stdout)["checks"] if c["name"] == "model.id")
    assert "not checked: the hub could not be reached" in check["detail"]
