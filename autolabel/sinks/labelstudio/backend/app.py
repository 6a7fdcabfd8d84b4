"""The Label Studio ML backend protocol as an ASGI app (Starlette), served by uvicorn.

Endpoints (what LS 1.x calls): GET /health and /, POST /setup, POST /predict, POST /webhook,
GET /metrics. Requests and answers are pydantic models; a malformed request gets a 4xx with a
JSON `detail` and the connection is closed, a 5xx means a bug in autolabel (and never carries a
traceback).

Connections are served by one event loop, so idle or slow clients cost a socket each, not a
thread: a request head must arrive within `head_timeout_s`, a body within `socket_timeout_s`.
Model work runs in a thread pool of `predict_slots` threads behind a waiting line of bounded
length; a full line answers 503 at once. `/health` never waits for the model.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import hmac
import inspect
import json
import logging
import socket
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, TypeVar

import h11
import uvicorn
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from autolabel import __version__
from autolabel.sinks.labelstudio.backend.logsafe import safe
from autolabel.sinks.labelstudio.backend.predictor import ConfigError, Predictor

log = logging.getLogger("autolabel.sinks.labelstudio.backend")

MODEL_CLASS = "AutolabelBackend"
DRAIN_LIMIT_BYTES = 16 * 1024 * 1024  # a refused body is read up to this, so the client sees 413
MAX_HEAD_BYTES = 16 * 1024  # request line and headers; more is 431
MAX_TARGET_BYTES = 8 * 1024  # the request target; more is 414
SERVER_HEADER = f"autolabel-backend/{__version__}"
ROUTES = {"/": ("GET",), "/health": ("GET",), "/metrics": ("GET",)} | {
    path: ("POST",) for path in ("/setup", "/predict", "/webhook")
}


@dataclass(frozen=True)
class ServerLimits:
    """Bounds on what one process takes on."""

    max_connections: int = 512  # open connections at once; requests on more get 503
    max_body_bytes: int = 64 * 1024 * 1024
    max_tasks: int = 100  # tasks in one /predict; more is 413
    predict_slots: int = 1  # /predict requests running at once (--workers)
    max_queue: int = 64  # /predict requests waiting for a slot; more get 503 at once
    queue_timeout_s: float = 300.0  # a /predict that waited this long for a slot gets 503
    head_timeout_s: float = 10.0  # a request line and headers must arrive within this
    socket_timeout_s: float = 60.0  # idle keep-alive connections and body reads
    max_projects: int = 64  # label configs remembered from /setup (least recently used go)
    auth_failures: int = 10  # failed logins from one address within auth_window_s ...
    auth_window_s: float = 60.0
    auth_lockout_s: float = 60.0  # ... get 429 for this long
    auth_clients: int = 4096  # addresses remembered by the login throttle


# --- the protocol's messages ---------------------------------------------------------------


class _Message(BaseModel):
    """LS sends more fields than the backend reads; they are kept, not refused."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class SetupRequest(_Message):
    """POST /setup: a project's labeling config, sent when the backend is connected."""

    label_config: str = Field(alias="schema", min_length=1)
    project: str | int | None = None


class PredictRequest(_Message):
    """POST /predict: tasks of one project, with its labeling config."""

    tasks: list[dict[str, Any]]
    label_config: str | None = None
    project: str | int | None = None
    params: dict[str, Any] | None = None


class WebhookRequest(_Message):
    """POST /webhook: an LS event (annotation created, ...)."""

    action: str


class HealthResponse(BaseModel):
    status: str = "UP"
    model_class: str = MODEL_CLASS


class SetupResponse(BaseModel):
    model_version: str


class PredictResponse(BaseModel):
    results: list[dict[str, Any]]
    model_version: str


class WebhookResponse(BaseModel):
    status: str = "ok"
    result: None = None


class MetricsResponse(_Message):
    uptime_s: float


class ErrorResponse(BaseModel):
    detail: str


M = TypeVar("M", bound=BaseModel)


class RequestError(Exception):
    """A request the backend refuses, with the HTTP status to answer."""

    def __init__(self, status: HTTPStatus, detail: str, headers: dict | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}


def _json(model: BaseModel, status: int = 200, headers: dict | None = None) -> Response:
    return Response(model.model_dump_json(), status, headers, media_type="application/json")


def _error(status: int, detail: str, headers: dict | None = None) -> Response:
    """An error answer; the connection closes, so an unread body is never read as a request."""
    headers = {"Connection": "close", **(headers or {})}
    if status == HTTPStatus.UNAUTHORIZED:
        headers["WWW-Authenticate"] = 'Basic realm="autolabel"'
    return _json(ErrorResponse(detail=detail), status, headers)


def _raw_error(status: int, detail: str) -> bytes:
    """An error answer written straight to the socket, for requests that never reach the app."""
    body = json.dumps({"detail": detail}).encode()
    phrase = HTTPStatus(status).phrase
    head = (
        f"HTTP/1.1 {status} {phrase}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


# --- bounded state -------------------------------------------------------------------------


class ProjectConfigs:
    """Label configs from /setup by project id, the `size` most recently used (thread-safe)."""

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self._configs: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, project: str, config: str) -> None:
        with self._lock:
            self._configs[project] = config
            self._configs.move_to_end(project)
            while len(self._configs) > self.size:
                self._configs.popitem(last=False)

    def get(self, project: str) -> str | None:
        with self._lock:
            config = self._configs.get(project)
            if config is not None:
                self._configs.move_to_end(project)
            return config

    def __len__(self) -> int:
        return len(self._configs)


class LoginThrottle:
    """Failed logins per client address: `failures` within `window_s` lock it out for
    `lockout_s`. At most `clients` addresses are remembered (least recently seen go first)."""

    def __init__(
        self,
        failures: int,
        window_s: float,
        lockout_s: float,
        clients: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failures, self.window_s, self.lockout_s = max(1, failures), window_s, lockout_s
        self.clients = max(1, clients)
        self.clock = clock
        self._table: OrderedDict[str, tuple[deque[float], float]] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, client: str) -> float:
        """Seconds until the client may try again; 0 when it is not locked out."""
        with self._lock:
            entry = self._table.get(client)
            return max(0.0, entry[1] - self.clock()) if entry else 0.0

    def failed(self, client: str) -> None:
        now = self.clock()
        with self._lock:
            times, _ = self._table.pop(client, (deque(maxlen=self.failures), 0.0))
            while times and times[0] <= now - self.window_s:
                times.popleft()
            times.append(now)
            locked_until = 0.0
            if len(times) >= self.failures:
                locked_until = now + self.lockout_s
                times.clear()
            self._table[client] = (times, locked_until)
            while len(self._table) > self.clients:
                self._table.popitem(last=False)

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._table.pop(client, None)

    def __len__(self) -> int:
        return len(self._table)


class Busy(Exception):
    """The model's waiting line is full, or a request waited too long in it."""


class ModelQueue:
    """Runs model work on `slots` threads; at most `waiting` more wait in line."""

    def __init__(self, slots: int, waiting: int, wait_timeout_s: float) -> None:
        self.capacity = max(1, slots) + max(0, waiting)
        self.wait_timeout_s = wait_timeout_s
        self.pending = 0  # running and waiting; touched only on the event loop
        self._executor = ThreadPoolExecutor(max(1, slots), thread_name_prefix="autolabel-model")

    async def run(self, work: Callable[[], Any]) -> Any:
        """work() on a model thread; Busy if the line is full or the wait was too long."""
        if self.pending >= self.capacity:
            raise Busy(f"{self.pending} predictions running or waiting; try again later")
        queued = time.monotonic()

        def job() -> Any:
            if time.monotonic() - queued > self.wait_timeout_s:
                raise Busy(f"no prediction slot within {self.wait_timeout_s:.0f} s")
            return work()

        self.pending += 1
        future = asyncio.get_running_loop().run_in_executor(self._executor, job)
        future.add_done_callback(self._done)
        # Shielded: a cancelled request leaves the slot counted until its thread is done.
        return await asyncio.shield(future)

    def _done(self, _: Any) -> None:
        self.pending -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


# --- the app ---------------------------------------------------------------------------------


class BackendApp:
    """The ASGI app: a guard (version, target length, login throttle, basic auth, errors as
    JSON, access log) in front of a Starlette router with the protocol's endpoints."""

    def __init__(
        self,
        predictor: Predictor,
        limits: ServerLimits | None = None,
        basic_auth: tuple[str, str] | None = None,
    ) -> None:
        self.predictor = predictor
        self.limits = limits = limits or ServerLimits()
        self.credentials = None if basic_auth is None else f"{basic_auth[0]}:{basic_auth[1]}"
        self.projects = ProjectConfigs(limits.max_projects)
        self.throttle = LoginThrottle(
            limits.auth_failures, limits.auth_window_s, limits.auth_lockout_s, limits.auth_clients
        )
        self.queue = ModelQueue(limits.predict_slots, limits.max_queue, limits.queue_timeout_s)
        self.counters: Counter = Counter()
        self.started = time.time()
        self._predict_kwargs = _accepted(predictor.predict, ("context", "params"))
        routes = [
            Route("/", self.health, methods=["GET"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
            Route("/setup", self.setup, methods=["POST"]),
            Route("/predict", self.predict, methods=["POST"]),
            Route("/webhook", self.webhook, methods=["POST"]),
        ]
        handlers = {
            HTTPException: self._http_exception,
            RequestError: self._request_error,
            Exception: self._internal_error,
        }
        self.router = Starlette(routes=routes, exception_handlers=handlers)  # type: ignore[arg-type]
        self.router.router.redirect_slashes = False

    def count(self, **increments: int) -> None:
        """Add to the counters /metrics reports (called on the event loop only)."""
        self.counters.update(increments)

    def close(self) -> None:
        self.queue.close()

    # --- guard -----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan is off; websockets are not served
        started = time.perf_counter()
        client = scope["client"][0] if scope.get("client") else "-"
        status = [0]

        async def send_logged(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"server", SERVER_HEADER.encode()),
                ]
            await send(message)

        try:
            refusal = self._refusal(scope, client)
            if refusal is not None:
                await refusal(scope, receive, send_logged)
            else:
                scope["path"] = scope["path"].rstrip("/") or "/"
                await self.router(scope, receive, send_logged)
        except Exception:  # a bug: say so, keep serving, no traceback to the client
            log.exception(
                "internal error on %s %s", safe(scope.get("method")), safe(scope.get("path"))
            )
            if not status[0]:
                await _error(500, "internal error, see logs")(scope, receive, send_logged)
        if 400 <= status[0] < 500:
            self.count(rejected=1)
        log.info(
            "%s %s %s %d %.3f s",
            safe(client), safe(scope.get("method")), safe(scope.get("path")),
            status[0], time.perf_counter() - started,
        )  # fmt: skip

    def _refusal(self, scope: Scope, client: str) -> Response | None:
        """An answer for requests refused before routing, or None."""
        if scope.get("http_version") not in ("1.0", "1.1"):
            return _error(400, "HTTP/1.0 or HTTP/1.1 only")
        if len(scope.get("raw_path", b"")) + len(scope.get("query_string", b"")) > MAX_TARGET_BYTES:
            return _error(414, f"request target longer than {MAX_TARGET_BYTES} bytes")
        # h11 bounds only heads that arrive in pieces; one that came whole is measured here.
        if sum(len(k) + len(v) + 4 for k, v in scope["headers"]) > MAX_HEAD_BYTES:
            return _error(431, f"request headers longer than {MAX_HEAD_BYTES} bytes")
        if self.credentials is None:
            return None
        wait = self.throttle.retry_after(client)
        if wait > 0:
            return _error(
                429, "too many failed logins; try again later", {"Retry-After": str(int(wait) + 1)}
            )
        header = dict(scope["headers"]).get(b"authorization", b"")
        if self._authorized(header):
            self.throttle.succeeded(client)
            return None
        self.throttle.failed(client)
        log.warning("failed login from %s", safe(client))
        return _error(401, "basic auth required")

    def _authorized(self, header: bytes) -> bool:
        assert self.credentials is not None
        scheme, _, token = header.partition(b" ")
        try:
            given = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            given = b""
        expected = self.credentials.encode()
        # compare_digest on every path: the answer takes as long whatever the header was.
        return hmac.compare_digest(given, expected) and scheme.lower() == b"basic"

    async def _http_exception(self, request: Request, exc: Exception) -> Response:
        """Starlette's 404 and 405, as JSON."""
        assert isinstance(exc, HTTPException)
        path = request.url.path
        if exc.status_code == HTTPStatus.METHOD_NOT_ALLOWED:
            allow = ", ".join(ROUTES.get(path, ()))
            return _error(405, f"{safe(request.method)} {safe(path)}", {"Allow": allow})
        if exc.status_code == HTTPStatus.NOT_FOUND:
            return _error(404, f"no endpoint {safe(path)}")
        return _error(exc.status_code, safe(exc.detail))

    async def _internal_error(self, request: Request, exc: Exception) -> Response:
        """A bug: JSON, no traceback (the guard logs it)."""
        return _error(500, "internal error, see logs")

    async def _request_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestError)
        return _error(exc.status, exc.detail, exc.headers)

    # --- endpoints -------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return _json(HealthResponse())

    async def metrics(self, request: Request) -> Response:
        uptime = round(time.time() - self.started, 1)
        counters = dict(self.counters)
        return _json(MetricsResponse(uptime_s=uptime, **counters, **self.predictor.describe()))

    async def setup(self, request: Request) -> Response:
        body = await self._body(request, SetupRequest)
        if not body.label_config.strip():
            raise RequestError(HTTPStatus.BAD_REQUEST, "/setup needs 'schema' (the label config)")
        spec = await self._spec(body.label_config)
        project = _project_id(body.project)
        if project:
            self.projects.put(project, body.label_config)
        return _json(SetupResponse(model_version=spec.model_version))

    async def predict(self, request: Request) -> Response:
        body = await self._body(request, PredictRequest)
        tasks = body.tasks
        if len(tasks) > self.limits.max_tasks:
            raise RequestError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"{len(tasks)} tasks in one request; the limit is {self.limits.max_tasks}",
            )
        label_config = body.label_config
        if label_config is None:
            label_config = self.projects.get(_project_id(body.project))
        if label_config is None:
            raise RequestError(
                HTTPStatus.BAD_REQUEST, "no 'label_config' in the request and no /setup for it"
            )
        spec = await self._spec(label_config)
        kwargs = self._predict_arguments(body.params)
        started = time.perf_counter()
        try:
            results = await self.queue.run(
                functools.partial(self.predictor.predict, tasks, label_config, **kwargs)
            )
        except Busy as exc:
            self.count(busy=1)
            busy = {"Retry-After": "5"}
            raise RequestError(HTTPStatus.SERVICE_UNAVAILABLE, str(exc), busy) from None
        empty = sum(1 for r in results if not r.get("result"))
        self.count(predict_requests=1, tasks=len(tasks), tasks_without_regions=empty)
        log.info(
            "predicted %d tasks (%d without regions) in %.1f s, model_version %s",
            len(tasks), empty, time.perf_counter() - started, spec.model_version,
        )  # fmt: skip
        return _json(PredictResponse(results=results, model_version=spec.model_version))

    async def webhook(self, request: Request) -> Response:
        await self._body(request, WebhookRequest)
        # Training-free methods have nothing to update from annotations; acknowledge the event.
        return _json(WebhookResponse(), HTTPStatus.CREATED)

    # --- helpers ---------------------------------------------------------------------------

    def _predict_arguments(self, params: dict[str, Any] | None) -> dict[str, Any]:
        """context and params for Predictor.predict, where it takes them; LS's login and
        password (basic auth of the backend) are not passed on."""
        params = {k: v for k, v in (params or {}).items() if k not in ("login", "password")}
        context = params.get("context")
        given = {"context": context if isinstance(context, dict) else None, "params": params}
        return {k: v for k, v in given.items() if k in self._predict_kwargs}

    async def _spec(self, label_config: str) -> Any:
        try:
            return await run_in_threadpool(self.predictor.spec, label_config)
        except ConfigError as exc:
            raise RequestError(HTTPStatus.UNPROCESSABLE_ENTITY, safe(str(exc), 500)) from exc

    async def _body(self, request: Request, model: type[M]) -> M:
        raw = await self._read(request)
        try:
            return model.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors(include_url=False, include_input=False)[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "body"
            detail = f"{where}: {first.get('msg')}"
            if first.get("type") == "json_invalid":
                detail = f"body is not JSON ({first.get('msg')})"
            elif first.get("type") == "model_type":
                detail = "body must be a JSON object"
            raise RequestError(HTTPStatus.BAD_REQUEST, safe(detail, 300)) from None

    async def _read(self, request: Request) -> bytes:
        length_header = request.headers.get("content-length")
        if length_header is None:
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "a JSON body with Content-Length")
        length = int(length_header)  # h11 has checked that it is digits, and not too many
        limit = self.limits.max_body_bytes
        if length > limit:
            await self._drain(request, min(length, DRAIN_LIMIT_BYTES))
            raise RequestError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body of {length} bytes; the limit is {limit}"
            )
        try:
            raw = await asyncio.wait_for(request.body(), self.limits.socket_timeout_s)
        except asyncio.TimeoutError:
            raise RequestError(HTTPStatus.REQUEST_TIMEOUT, "body too slow") from None
        except ClientDisconnect:
            raise RequestError(HTTPStatus.BAD_REQUEST, "body shorter than Content-Length") from None
        return raw

    async def _drain(self, request: Request, left: int) -> None:
        """Read and drop a refused body (up to a bound, in bounded time), so that the client
        gets to read the answer instead of a connection reset."""

        async def drain() -> None:
            nonlocal left
            async for chunk in request.stream():
                left -= len(chunk)
                if left <= 0:
                    return

        with contextlib.suppress(asyncio.TimeoutError, ClientDisconnect):
            await asyncio.wait_for(drain(), min(self.limits.socket_timeout_s, 10.0))


def _project_id(project: str | int | None) -> str:
    """LS sends the project as "<id>.<timestamp>"; the id part."""
    return "" if project is None else str(project).split(".", 1)[0]


def _accepted(function: Callable[..., Any], names: tuple[str, ...]) -> frozenset[str]:
    """Which of the keyword arguments `names` the function takes."""
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return frozenset()
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    return frozenset(n for n in names if takes_any or n in parameters)


# --- the HTTP protocol -----------------------------------------------------------------------


class _Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on request heads (slow-loris clients are
    dropped with 408), JSON answers to unparseable requests (431 for oversized heads), and a
    400 instead of a crash for a Content-Length too long to be a number."""

    def __init__(self, *args: Any, head_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_timeout_s = head_timeout_s
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # asyncio sets TCP_NODELAY only on sockets made with proto=IPPROTO_TCP, which a socket
        # handed to uvicorn is not; without it every answer waits for a delayed ACK (40 ms).
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._watch_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        try:
            super().data_received(data)
        except ValueError:  # h11 lets int() errors through (a 5000-digit Content-Length)
            self._refuse(400, "invalid HTTP request: malformed Content-Length")
            return
        self._watch_head()

    def send_400_response(self, msg: str) -> None:
        too_long = len(self.conn.trailing_data[0]) > MAX_HEAD_BYTES
        if too_long:
            self._refuse(431, f"request line and headers longer than {MAX_HEAD_BYTES} bytes")
        else:
            self._refuse(400, "invalid HTTP request")

    def _refuse(self, status: int, detail: str) -> None:
        self._stop_head_timer()
        if not self.transport.is_closing():
            self.transport.write(_raw_error(status, detail))
            self.transport.close()

    def _watch_head(self) -> None:
        """A timer runs while a request head is awaited after some of it came (or from the
        connection's start); keep-alive idleness before that is uvicorn's timeout."""
        reading_head = self.conn.their_state is h11.IDLE and (
            self.cycle is None or self.cycle.response_complete
        )
        if reading_head and self._head_timer is None and not self.transport.is_closing():
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)
        elif not reading_head:
            self._stop_head_timer()

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE:
            self._refuse(408, "request head not received in time")


# --- the server --------------------------------------------------------------------------------


class BackendServer:
    """The app on uvicorn, listening from construction (OSError if the address is taken).

    serve_forever() serves until shutdown() (from another thread) or a signal (in the main
    thread); server_close() releases the socket.
    """

    def __init__(
        self,
        address: tuple[str, int],
        predictor: Predictor,
        limits: ServerLimits | None = None,
        basic_auth: tuple[str, str] | None = None,
    ) -> None:
        self.limits = limits = limits or ServerLimits()
        self.app = BackendApp(predictor, limits, basic_auth)
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.socket = socket.create_server(address, family=family, backlog=1024)
        self.server_address = self.socket.getsockname()[:2]
        self.server_port: int = self.server_address[1]
        config = uvicorn.Config(
            self.app,
            http=functools.partial(_Protocol, head_timeout_s=limits.head_timeout_s),
            lifespan="off",
            log_config=None,
            access_log=False,  # the app logs each request, sanitised
            server_header=False,
            # uvicorn counts the connection asking too: N + 1 lets N connections in.
            limit_concurrency=limits.max_connections + 1,
            timeout_keep_alive=int(max(1, limits.socket_timeout_s)),
            timeout_graceful_shutdown=5,
            h11_max_incomplete_event_size=MAX_HEAD_BYTES,
            backlog=1024,
        )
        self._server = uvicorn.Server(config)
        self._stopped = threading.Event()

    def serve_forever(self) -> None:
        """Serve until shutdown(); in the main thread, SIGINT ends it with KeyboardInterrupt."""
        try:
            self._server.run(sockets=[self.socket])
        finally:
            self.app.close()
            self._stopped.set()

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Stop serving (bounded: running requests get a few seconds) and wait for it."""
        self._server.should_exit = True
        self._stopped.wait(timeout_s)

    def server_close(self) -> None:
        self.socket.close()


__all__ = [
    "BackendApp",
    "BackendServer",
    "LoginThrottle",
    "ModelQueue",
    "PredictRequest",
    "PredictResponse",
    "ProjectConfigs",
    "ServerLimits",
    "SetupRequest",
    "WebhookRequest",
]
