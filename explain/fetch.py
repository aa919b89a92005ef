"""Fetching a task's image bytes the way Label Studio stores them.

- ``/data/upload/...`` and ``/data/local-files/?d=...`` (relative to Label Studio): read straight
  from disk when the local-files document root is shared with us, else downloaded from Label
  Studio with its token: a legacy token as ``Token <key>``, a personal access token (a JWT) is
  exchanged for a short-lived access token that is refreshed before it expires;
- ``s3://``, ``gs://``, ``azure-blob://`` through Label Studio's presign endpoint;
- other ``http(s)`` URLs only from hosts the operator allows, and never from link-local or cloud
  metadata addresses, whatever the allow-list says.
Every download is bounded in bytes and seconds.
"""
from __future__ import annotations

import base64
import ipaddress
import socket
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, unquote, urljoin, urlparse

import requests

CLOUD_SCHEMES = ("s3", "gs", "azure-blob")
METADATA_HOSTS = {"metadata.google.internal", "metadata", "instance-data"}


class FetchError(Exception):
    """An image that could not be fetched; ``kind`` is a short code for metrics and the database."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class LabelStudioAuth:
    """Authorization header for Label Studio, from a legacy token or a personal access token."""

    REFRESH_MARGIN = 30.0

    def __init__(self, base_url: str, key: str, timeout: float = 10.0):
        self.base_url = base_url.rstrip("/")
        self.key = key
        self.timeout = timeout
        self._access: str | None = None
        self._expires = 0.0
        self._lock = threading.Lock()

    @property
    def is_personal_token(self) -> bool:
        return self.key.count(".") == 2

    def header(self) -> dict[str, str]:
        if not self.is_personal_token:
            return {"Authorization": f"Token {self.key}"}
        with self._lock:
            if self._access is None or time.monotonic() > self._expires - self.REFRESH_MARGIN:
                self._refresh()
            return {"Authorization": f"Bearer {self._access}"}

    def _refresh(self):
        try:
            answer = requests.post(
                f"{self.base_url}/api/token/refresh/", json={"refresh": self.key}, timeout=self.timeout
            )
        except requests.RequestException as exc:
            raise FetchError("auth", f"Label Studio token refresh failed: {type(exc).__name__}") from None
        if answer.status_code != 200 or "access" not in answer.json():
            raise FetchError("auth", f"Label Studio refused the personal access token (HTTP {answer.status_code})")
        self._access = answer.json()["access"]
        self._expires = time.monotonic() + 300.0  # Label Studio's access tokens live 5 minutes


class ImageFetcher:
    """Bytes of task images, bounded by ``max_bytes`` and ``timeout`` seconds."""

    def __init__(
        self,
        label_studio_url: str | None,
        auth: LabelStudioAuth | None,
        document_root: Path | None = None,
        allowed_hosts: tuple[str, ...] = (),
        max_bytes: int = 50_000_000,
        timeout: float = 10.0,
    ):
        self.label_studio_url = label_studio_url.rstrip("/") if label_studio_url else None
        self.auth = auth
        self.document_root = document_root.resolve() if document_root else None
        self.allowed_hosts = {h.lower() for h in allowed_hosts}
        self.max_bytes = max_bytes
        self.timeout = timeout

    def fetch(self, uri: str, task_id: int | None = None) -> bytes:
        """The image bytes for a task's image URI (see the module docstring)."""
        if not isinstance(uri, str) or not uri:
            raise FetchError("bad_task", "task has no image URI")
        parsed = urlparse(uri)
        if parsed.scheme in CLOUD_SCHEMES:
            return self._presigned(uri, task_id)
        if parsed.scheme in ("", "http", "https") and parsed.path.startswith(("/data/", "/storage-data/")):
            if not parsed.netloc or self._is_label_studio(parsed):
                return self._label_studio_file(parsed)
        if parsed.scheme in ("http", "https"):
            return self._external(uri, parsed)
        raise FetchError("bad_task", f"unsupported image URI scheme {parsed.scheme or 'relative'!r}")

    def _is_label_studio(self, parsed) -> bool:
        return bool(self.label_studio_url) and urlparse(self.label_studio_url).netloc == parsed.netloc

    def _label_studio_file(self, parsed) -> bytes:
        local = self._local_path(parsed)
        if local is not None:
            return self._read_local(local)
        if not self.label_studio_url or self.auth is None:
            raise FetchError(
                "config", "image is stored in Label Studio but LABEL_STUDIO_URL / an access token are not known"
            )
        url = urljoin(self.label_studio_url + "/", parsed.path.lstrip("/")) + (f"?{parsed.query}" if parsed.query else "")
        return self._download(url, self.auth.header())

    def _local_path(self, parsed) -> Path | None:
        if self.document_root is None or not parsed.path.startswith("/data/local-files"):
            return None
        relative = parse_qs(parsed.query).get("d", [""])[0]
        candidate = (self.document_root / unquote(relative)).resolve()
        if not candidate.is_relative_to(self.document_root):
            raise FetchError("bad_task", "local file path leaves the document root")
        return candidate if candidate.is_file() else None

    def _read_local(self, path: Path) -> bytes:
        size = path.stat().st_size
        if size > self.max_bytes:
            raise FetchError("image_too_large", f"image file is {size} bytes, over the limit of {self.max_bytes}")
        return path.read_bytes()

    def _presigned(self, uri: str, task_id: int | None) -> bytes:
        if not self.label_studio_url or self.auth is None or task_id is None:
            raise FetchError("config", "cloud storage images need LABEL_STUDIO_URL, an access token and the task id")
        encoded = base64.urlsafe_b64encode(uri.encode()).decode().rstrip("=")
        url = f"{self.label_studio_url}/tasks/{int(task_id)}/presign/?fileuri={encoded}"
        return self._download(url, self.auth.header())

    def _external(self, uri: str, parsed) -> bytes:
        host = (parsed.hostname or "").lower()
        if host not in self.allowed_hosts:
            raise FetchError("forbidden_host", f"image host {host!r} is not in ALLOWED_IMAGE_HOSTS")
        if host in METADATA_HOSTS or _resolves_to_link_local(host):
            raise FetchError("forbidden_host", f"image host {host!r} is a link-local or metadata address")
        return self._download(uri, {}, follow_redirects=False)

    def _download(self, url: str, headers: dict, follow_redirects: bool = True) -> bytes:
        deadline = time.monotonic() + self.timeout
        try:
            with requests.get(
                url, headers=headers, stream=True, timeout=self.timeout, allow_redirects=follow_redirects
            ) as answer:
                if answer.status_code != 200:
                    raise FetchError("image_fetch", f"image download answered HTTP {answer.status_code}")
                chunks, total = [], 0
                for chunk in answer.iter_content(1 << 16):
                    total += len(chunk)
                    if total > self.max_bytes:
                        raise FetchError("image_too_large", f"image is over the limit of {self.max_bytes} bytes")
                    if time.monotonic() > deadline:
                        raise FetchError("image_fetch", f"image download took over {self.timeout:g} s")
                    chunks.append(chunk)
                return b"".join(chunks)
        except requests.RequestException as exc:
            raise FetchError("image_fetch", f"image download failed: {type(exc).__name__}") from None


def _resolves_to_link_local(host: str) -> bool:
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror:
        return False
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        if ip.is_link_local or str(ip) in ("169.254.169.254", "fd00:ec2::254"):
            return True
    return False
