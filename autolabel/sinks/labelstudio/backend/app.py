"""The Label Studio ML backend protocol over the standard library's HTTP server.

Endpoints (what LS 1.x calls): GET /health and /, POST /setup, POST /predict, POST /webhook,
GET /metrics. The app is small enough that http.server serves it: no web framework to pin
against LS's own, threads for concurrent connections (bounded), and the model behind a lock.
Requests that are malformed get a 4xx with a JSON `detail`; a 5xx means a bug in autolabel.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import json
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from autolabel import __version__
from autolabel.sinks.labelstudio.backend.predictor import ConfigError, Predictor

log = logging.getLogger("autolabel.sinks.labelstudio.backend")

MODEL_CLASS = "AutolabelBackend"
DRAIN_LIMIT_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class ServerLimits:
    """Bounds on what one process takes on."""

    max_connections: int = 16  # open connections served at once; more get 503 at once
    max_body_bytes: int = 64 * 1024 * 1024
    predict_slots: int = 1  # /predict requests running at once; others wait in line
    queue_timeout_s: float = 300.0  # how long a /predict waits for a slot before 503
    socket_timeout_s: float = 60.0  # idle or slow clients are dropped after this


class RequestError(Exception):
    """A request the backend refuses, with the HTTP status to answer."""

    def __init__(self, status: HTTPStatus, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class BackendServer(ThreadingHTTPServer):
    """A threading HTTP server that serves at most max_connections at a time."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        predictor: Predictor,
        limits: ServerLimits | None = None,
        basic_auth: tuple[str, str] | None = None,
    ) -> None:
        self.predictor = predictor
        self.limits = limits = limits or ServerLimits()
        self.basic_auth = basic_auth
        self.connections = threading.BoundedSemaphore(limits.max_connections)
        self.predict_slots = threading.BoundedSemaphore(limits.predict_slots)
        self.schemas: dict[str, str] = {}  # project id -> labeling config from /setup
        self.counters: Counter = Counter()
        self.counter_lock = threading.Lock()
        self.started = time.time()
        super().__init__(address, Handler)

    def count(self, **increments: int) -> None:
        """Add to the counters /metrics reports."""
        with self.counter_lock:
            self.counters.update(increments)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Hand the connection to a thread, or answer 503 when all are busy."""
        if not self.connections.acquire(blocking=False):
            with contextlib.suppress(OSError):
                request.sendall(_raw_response(HTTPStatus.SERVICE_UNAVAILABLE, "server busy"))
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Serve one connection, then give its slot back."""
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connections.release()


def _raw_response(status: HTTPStatus, detail: str) -> bytes:
    body = json.dumps({"detail": detail}).encode()
    head = (
        f"HTTP/1.1 {status.value} {status.phrase}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class Handler(BaseHTTPRequestHandler):
    """Routes the ML backend endpoints; every answer is JSON."""

    server: BackendServer
    protocol_version = "HTTP/1.1"
    # Errors in unparseable request lines are answered with a status line too (not HTTP/0.9).
    default_request_version = "HTTP/1.1"
    server_version = f"autolabel-backend/{__version__}"

    def setup(self) -> None:
        """Apply the socket timeout before the request is read."""
        self.timeout = self.server.limits.socket_timeout_s
        super().setup()

    # --- routing -------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        """Health, metrics."""
        self._dispatch({"/": self._health, "/health": self._health, "/metrics": self._metrics})

    def do_POST(self) -> None:  # noqa: N802
        """Setup, predict, webhook."""
        self._dispatch(
            {"/setup": self._setup, "/predict": self._predict, "/webhook": self._webhook}
        )

    def do_PUT(self) -> None:  # noqa: N802
        """Not part of the protocol."""
        self._dispatch({})

    do_DELETE = do_PATCH = do_PUT  # noqa: N815

    def _dispatch(self, routes: dict[str, Any]) -> None:
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        try:
            self._check_auth()
            if path not in routes:
                known = {"/", "/health", "/metrics", "/setup", "/predict", "/webhook"}
                if path in known:
                    raise RequestError(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} {path}")
                raise RequestError(HTTPStatus.NOT_FOUND, f"no endpoint {path}")
            status, body = routes[path]()
        except RequestError as exc:
            self.server.count(rejected=1)
            # The body may be unread; it must not be taken for the next request.
            self.close_connection = True
            self._reply(exc.status, {"detail": exc.detail})
        except Exception:  # a bug: say so, keep serving
            log.exception("internal error on %s %s", self.command, path)
            self._reply(HTTPStatus.INTERNAL_SERVER_ERROR, {"detail": "internal error, see logs"})
        else:
            self._reply(status, body)

    # --- endpoints -----------------------------------------------------------------------

    def _health(self) -> tuple[HTTPStatus, dict]:
        return HTTPStatus.OK, {"status": "UP", "model_class": MODEL_CLASS}

    def _metrics(self) -> tuple[HTTPStatus, dict]:
        with self.server.counter_lock:
            counters = dict(self.server.counters)
        uptime = round(time.time() - self.server.started, 1)
        return HTTPStatus.OK, {"uptime_s": uptime, **counters, **self.server.predictor.describe()}

    def _setup(self) -> tuple[HTTPStatus, dict]:
        body = self._json_body()
        schema = body.get("schema")
        if not isinstance(schema, str) or not schema.strip():
            raise RequestError(HTTPStatus.BAD_REQUEST, "/setup needs 'schema' (the label config)")
        spec = self._spec(schema)
        project = str(body.get("project", "")).split(".", 1)[0]
        if project:
            self.server.schemas[project] = schema
        return HTTPStatus.OK, {"model_version": spec.model_version}

    def _predict(self) -> tuple[HTTPStatus, dict]:
        body = self._json_body()
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            raise RequestError(HTTPStatus.BAD_REQUEST, "'tasks' must be a list of task objects")
        schema = body.get("label_config")
        if schema is None:
            project = str(body.get("project", "")).split(".", 1)[0]
            schema = self.server.schemas.get(project)
        if not isinstance(schema, str):
            raise RequestError(
                HTTPStatus.BAD_REQUEST, "no 'label_config' in the request and no /setup for it"
            )
        spec = self._spec(schema)
        if not self.server.predict_slots.acquire(timeout=self.server.limits.queue_timeout_s):
            raise RequestError(HTTPStatus.SERVICE_UNAVAILABLE, "busy: too many predictions queued")
        try:
            started = time.perf_counter()
            results = self.server.predictor.predict(tasks, schema)
        finally:
            self.server.predict_slots.release()
        empty = sum(1 for r in results if not r["result"])
        self.server.count(predict_requests=1, tasks=len(tasks), tasks_without_regions=empty)
        log.info(
            "predicted %d tasks (%d without regions) in %.1f s, model_version %s",
            len(tasks), empty, time.perf_counter() - started, spec.model_version,
        )  # fmt: skip
        return HTTPStatus.OK, {"results": results, "model_version": spec.model_version}

    def _webhook(self) -> tuple[HTTPStatus, dict]:
        body = self._json_body()
        if not isinstance(body.get("action"), str):
            raise RequestError(HTTPStatus.BAD_REQUEST, "a webhook event needs an 'action'")
        # Training-free methods have nothing to update from annotations; acknowledge the event.
        return HTTPStatus.CREATED, {"status": "ok", "result": None}

    # --- helpers -------------------------------------------------------------------------

    def _spec(self, schema: str) -> Any:
        try:
            return self.server.predictor.spec(schema)
        except ConfigError as exc:
            raise RequestError(HTTPStatus.UNPROCESSABLE_ENTITY, str(exc)) from exc

    def _check_auth(self) -> None:
        expected = self.server.basic_auth
        if expected is None:
            return
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        try:
            user, _, password = base64.b64decode(token, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            user, password = "", ""
        ok = scheme.lower() == "basic" and hmac.compare_digest(
            f"{user}:{password}".encode(), f"{expected[0]}:{expected[1]}".encode()
        )
        if not ok:
            raise RequestError(HTTPStatus.UNAUTHORIZED, "basic auth required")

    def _json_body(self) -> dict:
        length_header = self.headers.get("Content-Length")
        if length_header is None or not length_header.isdigit():
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "a JSON body with Content-Length")
        length = int(length_header)
        if length > self.server.limits.max_body_bytes:
            limit = self.server.limits.max_body_bytes
            self._discard(length)
            raise RequestError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body of {length} bytes; the limit is {limit}"
            )
        raw = self.rfile.read(length)
        if len(raw) < length:
            raise RequestError(HTTPStatus.BAD_REQUEST, "body shorter than Content-Length")
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"body is not JSON ({exc})") from exc
        if not isinstance(body, dict):
            raise RequestError(HTTPStatus.BAD_REQUEST, "body must be a JSON object")
        return body

    def _discard(self, length: int) -> None:
        """Read and drop a refused body (up to a bound), so the client gets to read the answer
        instead of a connection reset."""
        left = min(length, DRAIN_LIMIT_BYTES)
        while left > 0:
            chunk = self.rfile.read(min(left, 65536))
            if not chunk:
                return
            left -= len(chunk)

    def _reply(self, status: HTTPStatus, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == HTTPStatus.UNAUTHORIZED:
            self.send_header("WWW-Authenticate", 'Basic realm="autolabel"')
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors, as JSON; unknown methods and versions are client faults."""
        if code == HTTPStatus.NOT_IMPLEMENTED:
            code = HTTPStatus.METHOD_NOT_ALLOWED
        elif code == HTTPStatus.HTTP_VERSION_NOT_SUPPORTED:
            code = HTTPStatus.BAD_REQUEST
        status = HTTPStatus(code)
        self.close_connection = True
        self._reply(status, {"detail": message or status.phrase})

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (base signature)
        """Access log through logging, not stderr."""
        log.info("%s %s", self.address_string(), format % args)
