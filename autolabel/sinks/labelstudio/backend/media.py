"""Task images for the ML backend, fetched through label-studio-sdk's resolver, within limits.

Only these are read: Local Storage files under the configured document root, and files that
the Label Studio server itself serves (uploads, Local Storage, cloud storage through its
presign endpoint, plain URLs on its host or on hosts the operator allowed). Anything else (other
hosts, file paths, file:// URLs) is refused before any request is made.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import requests

# A private module on purpose: label-studio-sdk 2.x has no public API that resolves a task's
# media reference. Its public `converter.utils.download` reads /data/upload/ files from a local
# upload folder instead of asking the server, sends no token for the server's own URLs, and takes
# no session; `Converter(local_files_resolver=, http_session=)` exports whole projects. This
# module is what the SDK's converters and the official ML backends use themselves (its README:
# "these tools are used in Label Studio ML backend"); pyproject bounds the SDK to 2.x.
from label_studio_sdk._extensions.label_studio_tools.core.utils.io import (
    get_local_path,
    http_session,
    is_cloud_storage_uri,
    local_files_resolver,
    resolve_local_storage_file,
    safe_build_path,
)
from requests.adapters import HTTPAdapter

from autolabel.errors import MediaError

DOWNLOAD_TIMEOUT_S = 30.0
MAX_DOWNLOAD_BYTES = 200 * 1024 * 1024


class _LimitedAdapter(HTTPAdapter):
    """The SDK downloads without a timeout; every request through this adapter gets one."""

    def send(self, request: Any, **kwargs: Any) -> Any:
        """Send with the default timeout unless the caller gave one."""
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = DOWNLOAD_TIMEOUT_S
        return super().send(request, **kwargs)


def _refuse_large(response: requests.Response, *args: Any, **kwargs: Any) -> None:
    length = response.headers.get("Content-Length")
    if length and length.isdigit() and int(length) > MAX_DOWNLOAD_BYTES:
        response.close()
        raise MediaError(f"{response.url}: {length} bytes is more than the download limit")


@dataclass
class MediaResolver:
    """Where task images may come from.

    ls_url, api_key: the Label Studio server (LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY).
    document_root: the server's LOCAL_FILES_DOCUMENT_ROOT as seen from this machine, to read
    Local Storage files from disk instead of over HTTP.
    allowed_hosts: extra hosts (host or host:port) whose plain http(s) URLs may be fetched.
    """

    ls_url: str | None = None
    api_key: str | None = None
    document_root: Path | None = None
    allowed_hosts: tuple[str, ...] = ()
    session: requests.Session = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.ls_url is not None and not self.ls_url.startswith(("http://", "https://")):
            raise ValueError(f"Label Studio URL {self.ls_url!r} must start with http(s)://")
        self.session = requests.Session()
        self.session.max_redirects = 5
        adapter = _LimitedAdapter()
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.hooks["response"].append(_refuse_large)

    def fetch(self, url: Any, task_id: int | None, workdir: Path) -> Path:
        """A local path to the image at url (downloads go to workdir), or a MediaError."""
        if not isinstance(url, str) or not url:
            raise MediaError("the task has no image URL in its data")
        parsed = urlparse(url)
        local_file = parsed.path.startswith("/data/local-files") and "d=" in parsed.query
        if local_file and not parsed.netloc and self.document_root is not None:
            return self._from_document_root(url)
        if parsed.scheme in ("http", "https"):
            if not self._host_allowed(parsed.netloc):
                raise MediaError(
                    f"{url}: host {parsed.netloc!r} is neither the Label Studio host nor an "
                    "allowed host (--allow-host)"
                )
        elif not (is_cloud_storage_uri(url) or url.startswith(("/data/", "/storage-data/"))):
            raise MediaError(f"{url}: not a URL Label Studio serves; file paths are not read")
        if not self.ls_url and not parsed.scheme.startswith("http"):
            raise MediaError(f"{url}: set LABEL_STUDIO_URL so that the image can be fetched")
        try:
            with http_session(self.session):
                path = get_local_path(
                    url,
                    cache_dir=str(workdir),
                    hostname=self.ls_url,
                    access_token=self.api_key,
                    task_id=task_id,
                )
        except MediaError:
            raise
        except Exception as exc:  # the SDK raises requests, OS and value errors alike
            raise MediaError(f"{url}: cannot fetch it ({type(exc).__name__}: {exc})") from exc
        return Path(path)

    def _host_allowed(self, netloc: str) -> bool:
        hosts = set(self.allowed_hosts)
        if self.ls_url:
            hosts.add(urlparse(self.ls_url).netloc)
        return netloc in hosts

    def _from_document_root(self, url: str) -> Path:
        root = self.document_root
        assert root is not None

        def resolve(relative: str) -> str | None:
            try:
                path = safe_build_path(str(root), posixpath.normpath(relative).lstrip("/"))
            except ValueError:
                return None
            return path if Path(path).is_file() else None

        try:
            with local_files_resolver(resolve):
                return Path(resolve_local_storage_file(url) or "")
        except FileNotFoundError as exc:
            raise MediaError(f"{url}: not a file under the document root {root}") from exc
