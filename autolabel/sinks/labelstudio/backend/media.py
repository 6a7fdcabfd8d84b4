"""Task images for the ML backend: from where the operator allowed, within limits.

Only these are read:

- Local Storage files (``/data/local-files/?d=``) under the configured document root, resolved
  to their real paths first (a symlink out of the root is refused);
- what the Label Studio server itself serves, fetched from it over HTTP with the API token:
  uploads (``/data/upload/...``, through ``/storage-data/uploaded/`` first as the SDK does),
  Local Storage files when no document root is set, other ``/data/`` and ``/storage-data/``
  paths, cloud storage URIs (``s3:``, ``gs:``, ``azure-blob:``) through its presign endpoint,
  and the ``/tasks/<id>/presign/?fileuri=`` URLs Label Studio puts in task data itself;
- plain http(s) URLs on the Label Studio host or on hosts the operator allowed (--allow-host).

Anything else (other hosts, file paths, file:// and data: URLs) is refused before any socket
is opened. Redirects are followed here, one hop at a time, and every hop is checked again; the
one exception is the first redirect that Label Studio's own presign, storage proxy or upload
endpoint answers with (the storage URL it signed), which may go to any http(s) host.

Downloads stream to the workdir, are cut at ``max_bytes`` whatever the headers say, and a whole
fetch (every hop, every read) ends at ``deadline_s``: a watchdog shuts the sockets down, so a
server that drips one byte at a time cannot hold it.

This replaces label-studio-sdk's private resolver (``_extensions...io.get_local_path``), which
followed redirects to any host, read uploads from Label Studio's default data folder on this
machine, and read response bodies whole.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import re
import socket
import tempfile
import threading
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from autolabel import __version__
from autolabel.errors import MediaError
from autolabel.sinks.labelstudio.backend.logsafe import safe

DOWNLOAD_TIMEOUT_S = 30.0  # a whole fetch: every redirect hop, every read
MAX_DOWNLOAD_BYTES = 200 * 1024 * 1024
MAX_REDIRECTS = 5
CHUNK_BYTES = 64 * 1024
CLOUD_SCHEMES = ("s3:", "gs:", "azure-blob:")
DEFAULT_PORTS = {"http": 80, "https": 443}
_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,8}")
# Task data that Label Studio serves itself (relative to its URL) ...
LS_PATHS = ("/data/", "/storage-data/")
_PRESIGN = re.compile(r"/tasks/\d+/presign/?")
# ... and its endpoints that may answer with a redirect to the storage URL they signed.
_SIGNING = re.compile(r"/tasks/\d+/presign/?|/storage-data/uploaded/?|/data/upload/.+")


def _verify_ssl_default() -> bool:
    """VERIFY_SSL=false turns certificate checks off, as with label-studio-sdk."""
    return os.environ.get("VERIFY_SSL", "true").strip().lower() not in ("0", "false", "no", "off")


# --- the deadline watchdog ---------------------------------------------------------------


class _Watch:
    """The sockets of one fetch; at the deadline they are shut down, which ends any read."""

    def __init__(self) -> None:
        self.expired = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []

    def add(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shut(sock)

    def expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    # socket.socket's own shutdown, also for TLS sockets: it wakes a recv blocked in another
    # thread (close does not) and leaves the TLS object to the thread that reads.
    with contextlib.suppress(OSError, ValueError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


_watch: ContextVar[_Watch | None] = ContextVar("autolabel_media_watch", default=None)


def _late(deadline: float) -> bool:
    """Past the current fetch's deadline (or its watchdog has fired)."""
    watch = _watch.get()
    return time.monotonic() >= deadline or (watch is not None and watch.expired)


class _WatchedHTTPConnection(HTTPConnection):
    def connect(self) -> None:
        super().connect()
        watch = _watch.get()
        if watch is not None:
            watch.add(self.sock)


class _WatchedHTTPSConnection(HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        watch = _watch.get()
        if watch is not None:
            watch.add(self.sock)


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_WATCHED_POOLS = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class _WatchedAdapter(HTTPAdapter):
    """Connections that register their sockets with the current fetch's watchdog."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_WATCHED_POOLS)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if hasattr(manager, "pool_classes_by_scheme"):
            manager.pool_classes_by_scheme = dict(_WATCHED_POOLS)
        return manager


# --- hosts -------------------------------------------------------------------------------


def _origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) URL without credentials, else None."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname or "@" in parts.netloc:
        return None
    return scheme, parts.hostname.lower(), port or DEFAULT_PORTS[scheme]


def _host_entry(entry: str) -> tuple[str, int | None]:
    """--allow-host's "host" or "host:port" (no port: the scheme's default port)."""
    parts = urlsplit("//" + entry.strip())
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"allowed host {entry!r}: bad port") from exc
    if not parts.hostname or "@" in parts.netloc or parts.path:
        raise ValueError(f"allowed host {entry!r} must be host or host:port")
    return parts.hostname.lower(), port


def _no_auth(request: requests.PreparedRequest) -> requests.PreparedRequest:
    return request


def _is_jwt(token: str) -> bool:
    """A JWT gets "Bearer", a legacy token "Token" (as label-studio-sdk decides)."""
    head = token.split(".")
    if len(head) != 3:
        return False
    try:
        header = json.loads(base64.urlsafe_b64decode(head[0] + "=" * (-len(head[0]) % 4)))
    except (ValueError, binascii.Error):
        return False
    return isinstance(header, dict) and "alg" in header


@dataclass(frozen=True)
class _Plan:
    """What to request for one task image: candidate URLs, tried in order on an HTTP error."""

    urls: tuple[str, ...]
    trust_first_redirect: bool  # Label Studio's presign / storage proxy answer
    name: str  # the task's reference, for the file suffix


class _HTTPStatusError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


@dataclass
class MediaResolver:
    """Where task images may come from, and how much of them is read.

    ls_url, api_key: the Label Studio server (LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY); the
    token goes to that origin only.
    document_root: the server's LOCAL_FILES_DOCUMENT_ROOT as seen from this machine, to read
    Local Storage files from disk instead of over HTTP.
    allowed_hosts: extra hosts (host or host:port) whose plain http(s) URLs may be fetched.
    max_bytes, deadline_s, max_redirects: limits on one fetch (all hops and reads together).
    """

    ls_url: str | None = None
    api_key: str | None = None
    document_root: Path | None = None
    allowed_hosts: tuple[str, ...] = ()
    max_bytes: int = MAX_DOWNLOAD_BYTES
    deadline_s: float = DOWNLOAD_TIMEOUT_S
    max_redirects: int = MAX_REDIRECTS
    verify_ssl: bool = field(default_factory=_verify_ssl_default)
    _hosts: frozenset[tuple[str, int | None]] = field(init=False, repr=False)
    _ls_origin: tuple[str, str, int] | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._ls_origin = None
        hosts = {_host_entry(entry) for entry in self.allowed_hosts}
        if self.ls_url is not None:
            self._ls_origin = _origin(self.ls_url)
            if self._ls_origin is None:
                raise ValueError(
                    f"Label Studio URL {self.ls_url!r} must be http(s)://host[:port][/path]"
                )
            hosts.add(self._ls_origin[1:])
        self._hosts = frozenset(hosts)
        if self.max_bytes < 1 or self.deadline_s <= 0 or self.max_redirects < 0:
            raise ValueError("max_bytes and deadline_s must be positive, max_redirects >= 0")

    # --- entry point ---------------------------------------------------------------------

    def fetch(self, url: Any, task_id: int | None, workdir: Path) -> Path:
        """A local path to the image at url (downloads go to workdir), or a MediaError."""
        if not isinstance(url, str) or not url:
            raise MediaError("the task has no image URL in its data")
        parts = urlsplit(url)
        local = parts.path.startswith("/data/local-files") and not (parts.scheme or parts.netloc)
        if local and self.document_root is not None:
            return self._from_document_root(url)
        return self._download(self._plan(url, task_id), workdir)

    # --- what to request -----------------------------------------------------------------

    def _plan(self, url: str, task_id: int | None) -> _Plan:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme in DEFAULT_PORTS:
            self._check_hop(url, frozenset())
            return _Plan((url,), self._signing_endpoint(url), parts.path)
        if url.startswith(CLOUD_SCHEMES):
            base = self._ls_base(url)
            if not isinstance(task_id, int) or isinstance(task_id, bool):
                raise MediaError(f"{safe(url)}: a cloud storage URI needs the task id to presign")
            fileuri = base64.urlsafe_b64encode(url.encode()).decode()
            presign = f"{base}/tasks/{task_id}/presign/?fileuri={fileuri}"
            return _Plan((presign,), True, parts.path)
        relative = not scheme and not parts.netloc
        if relative and (url.startswith(LS_PATHS) or _PRESIGN.fullmatch(parts.path)):
            base = self._ls_base(url)
            segments = unquote(parts.path).split("/")
            if "." in segments or ".." in segments:
                raise MediaError(f"{safe(url)}: a path with dot segments is not fetched")
            if parts.path.startswith("/data/upload/"):
                # As the SDK: the storage proxy (works with cloud-backed default storage),
                # then the legacy upload path.
                key = parts.path.removeprefix("/data/")
                proxy = f"{base}/storage-data/uploaded/?filepath={quote(key, safe='/%')}"
                return _Plan((proxy, base + url), True, parts.path)
            trusted = bool(_SIGNING.fullmatch(parts.path))
            query = parse_qs(parts.query)
            name = (query.get("d") or query.get("filepath") or [parts.path])[-1]
            return _Plan((base + url,), trusted, name)
        raise MediaError(f"{safe(url)}: not a URL Label Studio serves; file paths are not read")

    def _signing_endpoint(self, url: str) -> bool:
        """An absolute URL of one of Label Studio's own endpoints that redirect to storage."""
        if self.ls_url is None or _origin(url) != self._ls_origin:
            return False
        prefix = urlsplit(self.ls_url).path.rstrip("/")
        path = urlsplit(url).path
        if not path.startswith(prefix + "/"):
            return False
        return _SIGNING.fullmatch(path.removeprefix(prefix)) is not None

    def _ls_base(self, url: str) -> str:
        if not self.ls_url:
            raise MediaError(f"{safe(url)}: set LABEL_STUDIO_URL so that the image can be fetched")
        if not self.api_key:
            raise MediaError(
                f"{safe(url)}: set LABEL_STUDIO_API_KEY so that Label Studio serves the image"
            )
        return self.ls_url.rstrip("/")

    def _check_hop(self, url: str, extra: frozenset[tuple[str, int | None]]) -> None:
        """Refuse a URL (first or redirect target) outside the allowed hosts: no socket yet."""
        origin = _origin(url)
        if origin is None:
            raise MediaError(
                f"{safe(url)}: only http(s) URLs without credentials are fetched (scheme, host)"
            )
        scheme, host, port = origin
        hosts = self._hosts | extra
        default = port == DEFAULT_PORTS[scheme]
        if (host, port) not in hosts and not (default and (host, None) in hosts):
            raise MediaError(
                f"{safe(url)}: host {safe(f'{host}:{port}')} is not an allowed host: neither "
                "the Label Studio host nor one given with --allow-host"
            )

    def _headers(self, url: str) -> dict[str, str]:
        headers = {"User-Agent": f"autolabel-backend/{__version__}"}
        if self.api_key and self._ls_origin is not None and _origin(url) == self._ls_origin:
            kind = "Bearer" if _is_jwt(self.api_key) else "Token"
            headers["Authorization"] = f"{kind} {self.api_key}"
        return headers

    # --- downloading ---------------------------------------------------------------------

    def _download(self, plan: _Plan, workdir: Path) -> Path:
        watch = _Watch()
        timer = threading.Timer(self.deadline_s, watch.expire)
        timer.daemon = True
        deadline = time.monotonic() + self.deadline_s
        token = _watch.set(watch)
        session = requests.Session()
        adapter = _WatchedAdapter(max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        timer.start()
        try:
            for index, url in enumerate(plan.urls):
                last = index == len(plan.urls) - 1
                try:
                    return self._follow(session, url, plan, workdir, deadline)
                except _HTTPStatusError as exc:
                    if last:
                        raise MediaError(f"{safe(url)}: the server answered {exc}") from None
                except MediaError:
                    raise
                except (requests.RequestException, OSError, ValueError) as exc:
                    if _late(deadline):
                        raise MediaError(
                            f"{safe(url)}: not fetched within {self.deadline_s:g} s"
                        ) from None
                    detail = safe(f"{type(exc).__name__}: {exc}")
                    raise MediaError(f"{safe(url)}: cannot fetch it ({detail})") from None
            raise AssertionError("unreachable: a plan has at least one URL")
        finally:
            timer.cancel()
            _watch.reset(token)
            session.close()

    def _follow(
        self, session: requests.Session, url: str, plan: _Plan, workdir: Path, deadline: float
    ) -> Path:
        extra: frozenset[tuple[str, int | None]] = frozenset()
        trust = plan.trust_first_redirect
        for _hop in range(self.max_redirects + 1):
            self._check_hop(url, extra)
            left = deadline - time.monotonic()
            if left <= 0:
                raise MediaError(f"{safe(url)}: not fetched within {self.deadline_s:g} s")
            response = self._send(session, url, extra, left)
            with response:
                if response.is_redirect:
                    target = urljoin(url, response.headers["Location"])
                    if trust:  # Label Studio's own answer: the URL it signed for the bucket
                        origin = _origin(target)
                        extra = frozenset({origin[1:]}) if origin else extra
                        trust = False
                    url = target
                    continue
                if not 200 <= response.status_code < 300:
                    raise _HTTPStatusError(response.status_code)
                return self._save(response, url, plan.name, workdir, deadline)
        raise MediaError(f"{safe(plan.urls[0])}: more than {self.max_redirects} redirects")

    def _send(
        self,
        session: requests.Session,
        url: str,
        extra: frozenset[tuple[str, int | None]],
        left: float,
    ) -> requests.Response:
        """One GET, no redirects followed, checked again as requests will send it."""
        # A no-op auth keeps requests from adding ~/.netrc credentials on its own.
        request = requests.Request("GET", url, headers=self._headers(url), auth=_no_auth)
        prepared = session.prepare_request(request)
        sent = prepared.url or ""
        self._check_hop(sent, extra)  # the URL as requests normalised it (IDNA, quoting)
        if _origin(sent) != self._ls_origin:
            prepared.headers.pop("Authorization", None)
        settings = session.merge_environment_settings(sent, {}, True, self.verify_ssl, None)
        return session.send(prepared, allow_redirects=False, timeout=(left, left), **settings)

    def _save(
        self, response: requests.Response, url: str, name: str, workdir: Path, deadline: float
    ) -> Path:
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            raise MediaError(
                f"{safe(url)}: {safe(length, 30)} bytes is more than the download limit "
                f"({self.max_bytes} bytes)"
            )
        suffix = Path(name).suffix
        suffix = suffix if _SUFFIX.fullmatch(suffix) else ""
        handle, raw_path = tempfile.mkstemp(prefix="image-", suffix=suffix, dir=workdir)
        path = Path(raw_path)
        try:
            total = 0
            with os.fdopen(handle, "wb") as out:
                for chunk in response.iter_content(CHUNK_BYTES):
                    total += len(chunk)
                    if total > self.max_bytes:
                        raise MediaError(
                            f"{safe(url)}: more than the download limit ({self.max_bytes} bytes)"
                        )
                    if _late(deadline):
                        raise MediaError(f"{safe(url)}: not fetched within {self.deadline_s:g} s")
                    out.write(chunk)
            if _late(deadline):  # the watchdog may have cut a close-delimited body short
                raise MediaError(f"{safe(url)}: not fetched within {self.deadline_s:g} s")
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path

    # --- the document root ---------------------------------------------------------------

    def _from_document_root(self, url: str) -> Path:
        """The real path of a Local Storage file, which must lie under the real root."""
        root = self.document_root
        assert root is not None
        # Parsed like Label Studio's /data/local-files/ view: decoded once, the last d= wins,
        # and always relative to the root.
        values = parse_qs(urlsplit(url).query, keep_blank_values=True).get("d") or [""]
        relative = values[-1].lstrip("/")
        refused = MediaError(f"{safe(url)}: not a file under the document root {safe(root)}")
        if not relative or "\0" in relative:
            raise refused
        try:
            real_root = root.resolve(strict=True)
            real = (real_root / relative).resolve(strict=True)
        except (OSError, RuntimeError, ValueError):  # missing, a symlink loop, bad name
            raise refused from None
        if not real.is_relative_to(real_root) or not real.is_file():
            raise refused
        return real
