"""Where the ML backend may read task images from, against fake image hosts on loopback.

Each fake host is a threaded http.server on 127.0.0.1 or 127.0.0.2 (two host names for one
machine), started and stopped by its test; every handler loop is bounded in count and time.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from autolabel.errors import MediaError
from autolabel.sinks.labelstudio.backend.logsafe import safe
from autolabel.sinks.labelstudio.backend.media import MediaResolver

PNG = b"\x89PNG\r\n\x1a\n" + b"fake image bytes" * 4
TOKEN = "secret-token"

Route = Callable[[BaseHTTPRequestHandler], None]


@dataclass
class FakeHost:
    """A loopback HTTP server answering from `routes` (path without query -> handler)."""

    host: str
    routes: dict[str, Route] = field(default_factory=dict)
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    server: ThreadingHTTPServer | None = None

    @property
    def origin(self) -> str:
        assert self.server is not None
        return f"http://{self.host}:{self.server.server_port}"

    @property
    def netloc(self) -> str:
        return self.origin.removeprefix("http://")


@contextlib.contextmanager
def fake_host(host: str = "127.0.0.1") -> Iterator[FakeHost]:
    """Serve a FakeHost on host:0 in a thread; stop it (and its slow handlers) on exit."""
    fake = FakeHost(host)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            fake.seen.append((self.path, dict(self.headers)))
            route = fake.routes.get(self.path.split("?", 1)[0])
            if route is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            with contextlib.suppress(OSError):  # the client may hang up on purpose
                route(self)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    try:
        server = ThreadingHTTPServer((host, 0), Handler)
    except OSError as exc:  # 127.0.0.2 is loopback on Linux, not everywhere
        pytest.skip(f"cannot listen on {host}: {exc}")
    server.daemon_threads = True
    fake.server = server
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        fake.stop.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def send(body: bytes = PNG, status: int = 200, **headers: str) -> Route:
    """A route answering with body (Content-Length set) and headers."""

    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        for name, value in headers.items():
            handler.send_header(name.replace("_", "-"), value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return route


def redirect(location: str, status: int = 302) -> Route:
    """A route answering with a redirect to location."""
    return send(b"", status, Location=location)


def test_safe_is_one_short_line() -> None:
    assert safe("plain") == "plain"
    assert safe(42) == "42"
    forged = safe("x\n2026-01-01 INFO forged\r\x1b[31m\u2028end\\", 200)
    assert "\n" not in forged and "\r" not in forged and "\x1b" not in forged
    assert "\u2028" not in forged
    assert forged == "x\\n2026-01-01 INFO forged\\r\\x1b[31m\\u2028end\\\\"
    long = safe("a\n" * 500_000, limit=50)
    assert len(long) < 150 and "\n" not in long and "more chars" in long

    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert "Broken" in safe(Broken())


def test_redirect_to_a_host_not_allowed_is_refused_and_never_contacted(tmp_path: Path) -> None:
    with fake_host("127.0.0.1") as ls, fake_host("127.0.0.2") as other:
        ls.routes["/img.png"] = redirect(f"{other.origin}/x.png")
        ls.routes["/relative.png"] = redirect(f"//{other.netloc}/x.png", 307)
        other.routes["/x.png"] = send()
        media = MediaResolver(ls_url=ls.origin, api_key=TOKEN)
        for path in ("/img.png", "/relative.png"):
            with pytest.raises(MediaError, match="not an allowed host|neither"):
                media.fetch(f"{ls.origin}{path}", 1, tmp_path)
        assert other.seen == []
        assert list(tmp_path.iterdir()) == []
        # Once the operator allows the other host, the same redirect is followed, and the
        # Label Studio token goes to Label Studio only.
        allowed = MediaResolver(ls_url=ls.origin, api_key=TOKEN, allowed_hosts=(other.netloc,))
        path = allowed.fetch(f"{ls.origin}/img.png", 1, tmp_path)
        assert path.read_bytes() == PNG
        assert ls.seen[-1][1].get("Authorization") == f"Token {TOKEN}"
        assert [p for p, _ in other.seen] == ["/x.png"]
        assert "Authorization" not in other.seen[0][1]


def test_redirects_on_an_allowed_host_are_followed_but_bounded(tmp_path: Path) -> None:
    with fake_host() as ls:
        ls.routes["/a.png"] = redirect("/b.png", 301)
        ls.routes["/b.png"] = send()
        ls.routes["/loop.png"] = redirect("/loop.png")
        ls.routes["/ftp.png"] = redirect("ftp://127.0.0.1/x.png")
        media = MediaResolver(ls_url=ls.origin, api_key=TOKEN, max_redirects=3)
        assert media.fetch(f"{ls.origin}/a.png", 1, tmp_path).read_bytes() == PNG
        ls.seen.clear()
        with pytest.raises(MediaError, match="redirects"):
            media.fetch(f"{ls.origin}/loop.png", 1, tmp_path)
        assert len(ls.seen) == 4  # the first request and 3 redirects, no more
        with pytest.raises(MediaError, match="scheme"):
            media.fetch(f"{ls.origin}/ftp.png", 1, tmp_path)


def test_cloud_storage_goes_through_the_presign_endpoint(tmp_path: Path) -> None:
    """LS answers /tasks/<id>/presign/ with a redirect to the bucket it signed for: that one
    redirect is Label Studio's decision and is followed without --allow-host (no token)."""
    uri = "s3://bucket/dir/a.png"
    encoded = base64.urlsafe_b64encode(uri.encode()).decode()
    with fake_host("127.0.0.1") as ls, fake_host("127.0.0.2") as bucket:
        ls.routes["/tasks/7/presign/"] = redirect(f"{bucket.origin}/signed.png?sig=1")
        bucket.routes["/signed.png"] = send()
        media = MediaResolver(ls_url=ls.origin, api_key=TOKEN)
        assert media.fetch(uri, 7, tmp_path).read_bytes() == PNG
        assert ls.seen[0][0] == f"/tasks/7/presign/?fileuri={encoded}"
        assert ls.seen[0][1]["Authorization"] == f"Token {TOKEN}"
        assert "Authorization" not in bucket.seen[0][1]
        with pytest.raises(MediaError, match="task id"):
            media.fetch(uri, None, tmp_path)
        # The presign URLs Label Studio writes into task data, relative or on its host.
        for url in (f"/tasks/7/presign/?fileuri={encoded}", f"{ls.origin}/tasks/7/presign/"):
            assert media.fetch(url, 7, tmp_path).read_bytes() == PNG
        assert len(bucket.seen) == 3
        with pytest.raises(MediaError, match="not a URL Label Studio serves"):
            media.fetch("/tasks/7/annotations/", 7, tmp_path)
        # A plain URL on the LS host gets no such trust.
        ls.routes["/plain.png"] = redirect(f"{bucket.origin}/signed.png")
        with pytest.raises(MediaError, match="not an allowed host"):
            media.fetch(f"{ls.origin}/plain.png", 7, tmp_path)
        assert len(bucket.seen) == 3


def test_uploads_come_from_the_label_studio_server_not_a_local_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK read /data/upload/ from Label Studio's default data folder on this machine."""
    data_home = tmp_path / "xdg"
    monkeypatch.setenv("XDG_DATA_HOME", str(data_home))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    local = data_home / "label-studio" / "media" / "upload" / "3"
    local.mkdir(parents=True)
    (local / "a.png").write_bytes(b"a local file nobody configured")
    workdir = tmp_path / "work"
    workdir.mkdir()
    with fake_host() as ls:
        ls.routes["/storage-data/uploaded/"] = send(b"", 404)
        ls.routes["/data/upload/3/a.png"] = send()
        media = MediaResolver(ls_url=ls.origin, api_key=TOKEN)
        path = media.fetch("/data/upload/3/a.png", 1, workdir)
        assert path.read_bytes() == PNG
        assert path.parent == workdir
        assert [p for p, _ in ls.seen] == [
            "/storage-data/uploaded/?filepath=upload/3/a.png",
            "/data/upload/3/a.png",
        ]
        assert all(h["Authorization"] == f"Token {TOKEN}" for _, h in ls.seen)
        ls.routes["/storage-data/uploaded/"] = send()
        ls.seen.clear()
        assert media.fetch("/data/upload/3/a.png", 1, workdir).read_bytes() == PNG
        assert len(ls.seen) == 1
    with pytest.raises(MediaError, match="LABEL_STUDIO_API_KEY"):
        MediaResolver(ls_url="http://127.0.0.1:1").fetch("/data/upload/3/a.png", 1, workdir)


def test_local_files_without_a_document_root_come_from_the_server(tmp_path: Path) -> None:
    with fake_host() as ls:
        ls.routes["/data/local-files/"] = send()
        media = MediaResolver(ls_url=ls.origin, api_key=TOKEN)
        assert media.fetch("/data/local-files/?d=set/a.png", 1, tmp_path).read_bytes() == PNG
        assert ls.seen[0][0] == "/data/local-files/?d=set/a.png"
        for url in ("/data/../api/users/", "/data/%2e%2e/api/users/"):
            with pytest.raises(MediaError, match="dot segments"):
                media.fetch(url, 1, tmp_path)
        assert len(ls.seen) == 1


def test_symlinks_out_of_the_document_root_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "set").mkdir(parents=True)
    (root / "set" / "a.png").write_bytes(PNG)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"secret")
    (root / "set" / "link.png").symlink_to(outside / "secret.png")
    (root / "set" / "inside.png").symlink_to(root / "set" / "a.png")
    (root / "linked-dir").symlink_to(outside, target_is_directory=True)
    media = MediaResolver(ls_url="http://127.0.0.1:1", api_key=TOKEN, document_root=root)
    assert media.fetch("/data/local-files/?d=set/inside.png", 1, tmp_path).read_bytes() == PNG
    for relative in ("set/link.png", "linked-dir/secret.png", "set", "set/missing.png"):
        with pytest.raises(MediaError, match="document root"):
            media.fetch(f"/data/local-files/?d={relative}", 1, tmp_path)


def test_hosts_and_schemes_are_refused_before_any_socket_opens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_socket(*args: object, **kwargs: object) -> None:
        raise AssertionError("a socket was opened")

    monkeypatch.setattr(socket, "create_connection", no_socket)
    monkeypatch.setattr(socket.socket, "connect", no_socket)
    media = MediaResolver(ls_url="http://ls.example:8080", api_key=TOKEN, allowed_hosts=("cdn",))
    refused = [
        "http://169.254.169.254/latest/meta-data",
        "http://ls.example/a.png",  # another port
        "http://ls.example:8080@169.254.169.254/a.png",
        "http://user@ls.example:8080/a.png",
        "http://cdn:81/a.png",
        "gopher://ls.example:8080/a.png",
        "file:///etc/passwd",
        "/etc/passwd",
        "data:image/png;base64,AAAA",
        "upload/1/a.png",
    ]
    for url in refused:
        with pytest.raises(MediaError):
            media.fetch(url, 1, tmp_path)


def test_chunked_and_close_delimited_bodies_stop_at_the_cap(tmp_path: Path) -> None:
    block = b"\0" * 65536
    blocks = 128  # 8 MiB offered; the cap is 256 KiB

    def chunked(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        for _ in range(blocks):
            if fake.stop.is_set():
                return
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
        handler.wfile.write(b"0\r\n\r\n")

    def close_delimited(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.close_connection = True
        for _ in range(blocks):
            if fake.stop.is_set():
                return
            handler.wfile.write(block)

    def declared(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(10**12))
        handler.end_headers()
        handler.wfile.write(block)

    with fake_host() as fake:
        fake.routes["/chunked.png"] = chunked
        fake.routes["/close.png"] = close_delimited
        fake.routes["/declared.png"] = declared
        media = MediaResolver(ls_url=fake.origin, api_key=TOKEN, max_bytes=256 * 1024)
        for path in ("/chunked.png", "/close.png", "/declared.png"):
            workdir = tmp_path / path.strip("/")
            workdir.mkdir()
            tracemalloc.start()
            try:
                with pytest.raises(MediaError, match="download limit"):
                    media.fetch(f"{fake.origin}{path}", 1, workdir)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            assert peak < 4 * 1024 * 1024, (path, peak)  # not the 8 MiB body
            assert list(workdir.iterdir()) == []  # the partial file is removed


@pytest.mark.parametrize("phase", ["body", "close-delimited body", "headers"])
def test_a_slow_server_is_cut_off_at_the_deadline(tmp_path: Path, phase: str) -> None:
    def drip(handler: BaseHTTPRequestHandler) -> None:
        wfile = handler.wfile
        if phase == "body":
            handler.send_response(200)
            handler.send_header("Content-Length", "1000")
            handler.end_headers()
        elif phase == "close-delimited body":  # cut short, it would look complete
            handler.send_response(200)
            handler.send_header("Connection", "close")
            handler.end_headers()
            handler.close_connection = True
        else:
            wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        for _ in range(100):  # at most 20 s, less once the test stops the host
            if fake.stop.wait(0.2):
                return
            wfile.write(b"a")
            wfile.flush()

    with fake_host() as fake:
        fake.routes["/slow.png"] = drip
        media = MediaResolver(ls_url=fake.origin, api_key=TOKEN, deadline_s=1.0)
        started = time.monotonic()
        with pytest.raises(MediaError, match="1 s"):
            media.fetch(f"{fake.origin}/slow.png", 1, tmp_path)
        assert time.monotonic() - started < 2.0
        assert list(tmp_path.iterdir()) == []


def test_error_messages_from_request_data_are_short_single_lines(tmp_path: Path) -> None:
    media = MediaResolver(ls_url="http://127.0.0.1:1", api_key=TOKEN, document_root=tmp_path)
    payload = "\n2026-01-01 00:00:00 INFO forged line\r\n" + "a" * 1_000_000
    urls = [
        "http://169.254.169.254/" + payload,
        "data:image/png;base64," + payload,
        "/data/local-files/?d=" + payload,
        "s3://bucket/" + payload,
    ]
    for url in urls:
        with pytest.raises(MediaError) as caught:
            media.fetch(url, None, tmp_path)
        message = str(caught.value)
        assert "\n" not in message and "\r" not in message, message[:300]
        assert len(message) < 1000, len(message)
