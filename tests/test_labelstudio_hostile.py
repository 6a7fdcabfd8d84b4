"""The ML backend against hostile, broken and heavy clients, over real sockets on loopback.

Every server here runs in-process on 127.0.0.1 and is shut down (bounded) by its fixture; every
load is bounded in count and in time.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import typer

from autolabel.sinks.labelstudio.backend.app import BackendServer, LoginThrottle, ServerLimits
from autolabel.sinks.labelstudio.backend.predictor import Predictor
from autolabel.sinks.labelstudio.config import make_label_config
from autolabel.vocab import load_vocabulary

Serve = Callable[..., tuple[str, BackendServer]]
SMUGGLED = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture
def config(vocab_file: Path) -> str:
    return make_label_config(load_vocabulary(vocab_file))


@pytest.fixture
def serve(predictor: Predictor) -> Iterator[Serve]:
    """Start backends with given limits; all are stopped at the end of the test."""
    servers: list[tuple[BackendServer, threading.Thread]] = []

    def start(
        limits: ServerLimits | None = None, basic_auth: tuple[str, str] | None = None
    ) -> tuple[str, BackendServer]:
        server = BackendServer(("127.0.0.1", 0), predictor, limits, basic_auth)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{server.server_port}"
        for _ in range(100):  # up within 5 s
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(f"{url}/health", timeout=1, auth=basic_auth)
                break
            time.sleep(0.05)
        servers.append((server, thread))
        return url, server

    yield start
    for server, thread in servers:
        server.shutdown(timeout_s=10)
        server.server_close()
        thread.join(timeout=10)
        assert not thread.is_alive(), "the backend did not stop"


def _exchange(url: str, raw: bytes, timeout: float = 5.0) -> tuple[bytes, bool]:
    """Send raw bytes; everything the server answers, and whether it closed the connection."""
    host, port = url.removeprefix("http://").split(":")
    received = b""
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(raw)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                return received, False
            if not chunk:
                return received, True
            received += chunk
    return received, False


def _status(answer: bytes) -> int:
    return int(answer.split(b"\r\n", 1)[0].split()[1])


# --- 4: starvation -------------------------------------------------------------------------


def test_health_answers_while_slow_loris_and_a_slow_prediction_hold_on(
    serve: Serve, predictor: Predictor, config: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """40 connections that never finish their headers and a prediction that takes seconds:
    /health still answers within 1 s."""
    release = threading.Event()
    real_predict = predictor.predict

    def slow_predict(*args: object, **kwargs: object) -> list[dict]:
        release.wait(10)
        return real_predict(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(predictor, "predict", slow_predict)
    url, _ = serve()
    host, port = url.removeprefix("http://").split(":")
    loris = []
    with ThreadPoolExecutor(1) as pool:
        try:
            slow = pool.submit(
                httpx.post, f"{url}/predict", json={"tasks": [], "label_config": config}, timeout=30
            )
            for _ in range(40):
                sock = socket.create_connection((host, int(port)), timeout=5)
                sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: appl")
                loris.append(sock)
            time.sleep(0.3)
            started = time.monotonic()
            health = httpx.get(f"{url}/health", timeout=1.0)
            assert health.status_code == 200
            assert time.monotonic() - started < 1.0
            assert not slow.done()
        finally:
            release.set()
            for sock in loris:
                sock.close()
        assert slow.result(timeout=30).status_code == 200


def test_a_request_head_that_never_ends_is_dropped(serve: Serve) -> None:
    url, _ = serve(ServerLimits(head_timeout_s=0.5))
    started = time.monotonic()
    answer, closed = _exchange(url, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: 1", timeout=5)
    assert closed and time.monotonic() - started < 4
    assert _status(answer) == 408


# --- 5: the advertised concurrency ------------------------------------------------------------


def test_two_hundred_predictions_from_sixteen_clients_all_succeed(
    serve: Serve, predictor: Predictor, config: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """16 clients, a new connection per request, one worker: they wait in line, none gets 503.
    (Each prediction takes 10 ms more than its task, which fails fast, so the line fills up;
    benchmarks/labelstudio_backend.py runs the same load with real images.)"""
    real_predict = predictor.predict

    def predict(*args: object, **kwargs: object) -> list[dict]:
        time.sleep(0.01)
        return real_predict(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(predictor, "predict", predict)
    url, server = serve()
    body = {"tasks": [{"id": 1, "data": {}}], "label_config": config}

    data = json.dumps(body).encode()
    host, port = url.removeprefix("http://").split(":")

    def one(_: int) -> int:
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            connection.request("POST", "/predict", data, {"Content-Type": "application/json"})
            return connection.getresponse().status
        finally:
            connection.close()

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(one, range(200), timeout=240))
    assert codes == [200] * 200
    metrics = httpx.get(f"{url}/metrics").json()
    assert metrics["predict_requests"] == 200
    assert server.app.queue.pending == 0


def test_a_full_waiting_line_answers_503_at_once_and_health_does_not_wait(
    serve: Serve, predictor: Predictor, config: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()

    def blocked(tasks: list[dict], label_config: str) -> list[dict]:
        release.wait(10)
        return []

    monkeypatch.setattr(predictor, "predict", blocked)
    url, server = serve(ServerLimits(predict_slots=1, max_queue=1))
    body = {"tasks": [], "label_config": config}
    with ThreadPoolExecutor(2) as pool:
        try:
            held = [pool.submit(httpx.post, f"{url}/predict", json=body, timeout=30)]
            held.append(pool.submit(httpx.post, f"{url}/predict", json=body, timeout=30))
            deadline = time.monotonic() + 10
            while server.app.queue.pending < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            refused = httpx.post(f"{url}/predict", json=body, timeout=5)
            assert refused.status_code == 503
            assert refused.headers["Retry-After"]
            assert httpx.get(f"{url}/health", timeout=1).status_code == 200
        finally:
            release.set()
        assert [f.result(timeout=30).status_code for f in held] == [200, 200]


# --- 6: bounded /setup memory ----------------------------------------------------------------


def test_setup_remembers_a_bounded_number_of_projects(serve: Serve, config: str) -> None:
    url, server = serve()
    with httpx.Client(base_url=url) as client:
        for project in range(1, 65):
            setup = client.post("/setup", json={"project": f"{project}.1", "schema": config})
            assert setup.status_code == 200
        # project 1 is used again, so project 2 is now the least recently used
        assert client.post("/predict", json={"tasks": [], "project": "1.1"}).status_code == 200
        for project in range(65, 71):
            client.post("/setup", json={"project": project, "schema": config})
        assert len(server.app.projects) == 64
        assert client.post("/predict", json={"tasks": [], "project": "1"}).status_code == 200
        assert client.post("/predict", json={"tasks": [], "project": "70"}).status_code == 200
        forgotten = client.post("/predict", json={"tasks": [], "project": "2"})
        assert forgotten.status_code == 400
        assert "no /setup" in forgotten.json()["detail"]


# --- 7: client mistakes are 4xx, and a refused request's leftovers are never a request ----------


@pytest.mark.parametrize(
    "head",
    [
        b"POST /setup HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc\r\n\r\n",
        b"POST /setup HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n",
        b"POST /setup HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"POST /setup HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
    ],
    ids=["non-digit", "5000-digits", "negative", "two-lengths"],
)
def test_a_broken_content_length_is_400_and_closes(serve: Serve, head: bytes) -> None:
    url, _ = serve()
    answer, closed = _exchange(url, head + SMUGGLED)
    assert _status(answer) == 400, answer[:200]
    assert answer.count(b"HTTP/1.1 ") == 1, "the leftover bytes were parsed as a request"
    assert closed
    assert b"Traceback" not in answer


@pytest.mark.parametrize(
    "body",
    [b"[" * 100_000 + b"]" * 100_000, b'{"tasks": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"],
    ids=["array", "in-tasks"],
)
def test_json_nested_100k_deep_is_400(serve: Serve, body: bytes) -> None:
    url, _ = serve()
    head = f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    answer, closed = _exchange(url, head + body + SMUGGLED, timeout=10)
    assert _status(answer) == 400, answer[:200]
    assert answer.count(b"HTTP/1.1 ") == 1 and closed
    assert httpx.get(f"{url}/health").status_code == 200  # and the server is fine


def test_a_non_ascii_authorization_is_401_and_closes(serve: Serve) -> None:
    url, _ = serve(basic_auth=("ls", "s3cret"))
    smuggled_len = len(SMUGGLED)
    head = (
        b"POST /setup HTTP/1.1\r\nHost: x\r\nAuthorization: Basic \xc3\xa9t\xe9\xff\r\n"
        b"Content-Length: " + str(smuggled_len).encode() + b"\r\n\r\n"
    )
    answer, closed = _exchange(url, head + SMUGGLED)
    assert _status(answer) == 401
    assert answer.count(b"HTTP/1.1 ") == 1 and closed
    utf8 = {"Authorization": "Basic " + base64.b64encode("l\u00e9:p\u00e4ss".encode()).decode()}
    assert httpx.get(f"{url}/health", headers=utf8).status_code == 401
    assert httpx.get(f"{url}/health", auth=("ls", "s3cret")).status_code == 200


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /health?q=" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n", 431),
        (
            b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\n{}\r\n0\r\n\r\n",
            411,
        ),
        (b"GET /health HTTP/1.1\r\nHost: x\r\nBad Header: x\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Nul: a\x00b\r\n\r\n", 400),
    ],
    ids=["414-target", "431-headers", "411-chunked", "bad-header-name", "nul-in-header"],
)
def test_oversized_and_malformed_heads(serve: Serve, raw: bytes, status: int) -> None:
    url, _ = serve()
    answer, closed = _exchange(url, raw)
    assert _status(answer) == status, answer[:200]
    assert closed
    detail = json.loads(answer.split(b"\r\n\r\n", 1)[1])["detail"]
    assert detail and "Traceback" not in detail


def test_a_bug_is_500_without_a_traceback(
    serve: Serve, predictor: Predictor, config: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(tasks: list[dict], label_config: str) -> list[dict]:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(predictor, "predict", broken)
    url, _ = serve()
    answer = httpx.post(f"{url}/predict", json={"tasks": [], "label_config": config})
    assert answer.status_code == 500
    assert answer.json() == {"detail": "internal error, see logs"}
    assert httpx.get(f"{url}/health").status_code == 200


# --- 9: tasks per request ----------------------------------------------------------------------


def test_tasks_per_request_are_limited(serve: Serve, config: str) -> None:
    assert ServerLimits().max_tasks == 100
    url, _ = serve(ServerLimits(max_tasks=3))
    tasks = [{"id": i, "data": {}} for i in range(4)]
    too_many = httpx.post(f"{url}/predict", json={"tasks": tasks, "label_config": config})
    assert too_many.status_code == 413
    assert "limit is 3" in too_many.json()["detail"]
    ok = httpx.post(f"{url}/predict", json={"tasks": tasks[:3], "label_config": config})
    assert ok.status_code == 200 and len(ok.json()["results"]) == 3


# --- 10: failed logins ---------------------------------------------------------------------------


def test_failed_logins_are_throttled(serve: Serve) -> None:
    limits = ServerLimits(auth_failures=3, auth_window_s=60, auth_lockout_s=1.0)
    url, _ = serve(limits, basic_auth=("ls", "s3cret"))
    assert httpx.get(f"{url}/health", auth=("ls", "s3cret")).status_code == 200
    for _ in range(3):
        assert httpx.get(f"{url}/health", auth=("ls", "guess")).status_code == 401
    locked = httpx.get(f"{url}/health", auth=("ls", "s3cret"))  # even the right password
    assert locked.status_code == 429
    assert int(locked.headers["Retry-After"]) >= 1
    assert httpx.post(f"{url}/setup", auth=("ls", "guess"), json={}).status_code == 429
    time.sleep(1.2)
    assert httpx.get(f"{url}/health", auth=("ls", "s3cret")).status_code == 200


def test_the_login_throttle_forgets_old_failures_and_is_bounded() -> None:
    now = [0.0]
    throttle = LoginThrottle(3, window_s=10, lockout_s=30, clients=100, clock=lambda: now[0])
    for _ in range(5):  # failures further apart than the window never lock out
        throttle.failed("a")
        now[0] += 11
    assert throttle.retry_after("a") == 0
    for _ in range(3):
        throttle.failed("b")
    assert throttle.retry_after("b") == pytest.approx(30)
    throttle.succeeded("a")
    for i in range(10_000):
        throttle.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(throttle) == 100


# --- 8: log lines from request data ---------------------------------------------------------------


def test_request_data_in_log_lines_is_escaped_and_cut(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    url, _ = serve()
    caplog.set_level(logging.INFO, logger="autolabel.sinks.labelstudio.backend")
    forged = "/nope%0D%0A2026-01-01 INFO forged line" + "x" * 2000
    assert httpx.get(url + forged).status_code == 404
    answer = httpx.post(f"{url}/predict", content=b'{"tasks": "\\n' + b"y" * 5000 + b'"}')
    assert answer.status_code == 400 and len(answer.json()["detail"]) < 600
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("autolabel")]
    assert any("forged line" in line for line in lines)
    for line in lines:
        assert "\n" not in line and "\r" not in line
        assert len(line) < 1000


# --- environment names --------------------------------------------------------------------------


def test_serve_accepts_label_studio_environment_names() -> None:
    import autolabel.cli.labelstudio  # noqa: F401 (attaches the command)
    from autolabel.cli.apps import app

    command = typer.main.get_command(app)
    serve = command.commands["serve"].commands["labelstudio"]  # type: ignore[attr-defined]
    envvars = {p.name: p.envvar for p in serve.params}
    assert envvars["ls_url"] == ["LABEL_STUDIO_URL", "LABEL_STUDIO_HOST"]
    assert envvars["api_key"] == ["LABEL_STUDIO_API_KEY", "LABEL_STUDIO_ACCESS_TOKEN"]
    assert envvars["max_tasks"] == "AUTOLABEL_MAX_TASKS"
