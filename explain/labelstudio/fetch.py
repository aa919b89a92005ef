"""Fetching a task's image bytes the way Label Studio stores them.

- ``/data/upload/...``, ``/data/local-files/?d=...`` and ``/storage-data/...`` (relative to Label
  Studio, or absolute on its origin): read straight from disk when the local-files document root
  is shared with us, else downloaded from Label Studio with its token: a legacy token as
  ``Token <key>``, a personal access token (a JWT) is exchanged for a short-lived access token
  that is refreshed before it expires. The path is decoded and its dot segments resolved first;
  any other Label Studio path is refused, so the token only ever goes to these file routes and
  to the presign route;
- ``s3://``, ``gs://``, ``azure-blob://`` through Label Studio's presign endpoint;
- other ``http(s)`` URLs only from hosts the operator allows, and never from link-local or cloud
  metadata addresses, whatever the allow-list says.

A URI is parsed once, by urllib3's parser (the one requests uses), and the connection is made to
exactly the host, port and path that were checked: URIs with a user part, a backslash, whitespace
or control characters are refused, the host is resolved once, every address it resolves to is
checked and the socket connects to a checked address. Every download is bounded in bytes and by
one deadline for the whole exchange (connect, TLS, headers, body, redirects): a watchdog shuts the
socket down when it passes. Any problem with one URI raises FetchError, whose message names no
file path.
"""
from __future__ import annotations

import base64
import errno
import functools
import http.client
import ipaddress
import os
import re
import socket
import ssl
import stat
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urljoin

import certifi
import requests
from urllib3.exceptions import LocationParseError
from urllib3.util import Url, parse_url

CLOUD_SCHEMES = ("s3", "gs", "azure-blob")
METADATA_HOSTS = {"metadata.google.internal", "metadata", "instance-data"}
METADATA_ADDRESSES = {
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "192.0.0.192")
}
FILE_ROUTES = ("/data/upload/", "/data/local-files/", "/storage-data/")  # the only paths the token goes to
MAX_REDIRECTS = 5
_UNSAFE = re.compile(r"[\x00-\x20\x7f\\]")  # controls, whitespace, backslash: parsers disagree on them
_UNSAFE_DECODED = re.compile(r"[\x00-\x1f\x7f\\]")  # a decoded space is just part of a file name
_IPV4_IN_IPV6 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("::/96"))  # NAT64, IPv4-compatible


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
    """Bytes of task images, bounded by ``max_bytes`` and ``timeout`` seconds per image."""

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
        try:
            self._label_studio = _parse(self.label_studio_url) if self.label_studio_url else None
        except FetchError:  # an unusable LABEL_STUDIO_URL: its files fail as not configured
            self.label_studio_url = self._label_studio = None
        self.auth = auth
        self.document_root = document_root.resolve() if document_root else None
        self.allowed_hosts = {_canonical_host(h) for h in allowed_hosts}
        self.max_bytes = max_bytes
        self.timeout = timeout

    def fetch(self, uri: str, task_id: int | None = None) -> bytes:
        """The image bytes for a task's image URI (see the module docstring); FetchError otherwise."""
        try:
            return self._fetch(uri, task_id)
        except FetchError:
            raise
        except Exception as exc:  # whatever else goes wrong with one URI stays that task's failure
            raise FetchError("image_fetch", f"image could not be fetched ({type(exc).__name__})") from None

    def _fetch(self, uri: str, task_id: int | None) -> bytes:
        if not isinstance(uri, str) or not uri:
            raise FetchError("bad_task", "task has no image URI")
        url = _parse(uri)
        if url.scheme in CLOUD_SCHEMES:
            return self._presigned(uri, task_id)
        if url.scheme is None:
            if url.host is not None or not uri.startswith("/"):
                raise FetchError("bad_task", "relative image URI must be a Label Studio path starting with '/'")
            return self._label_studio_file(url)
        if url.scheme not in ("http", "https"):
            raise FetchError("bad_task", f"unsupported image URI scheme {url.scheme!r}")
        if self._is_label_studio(url):
            return self._label_studio_file(url)
        return self._external(url)

    def _is_label_studio(self, url: Url) -> bool:
        return self._label_studio is not None and _origin(url) == _origin(self._label_studio)

    def _label_studio_file(self, url: Url) -> bytes:
        path = self._file_route(url)
        if path is None:
            raise FetchError(
                "bad_task", "image path is not a Label Studio file route (/data/upload/, /data/local-files/?d=, "
                "/storage-data/)"
            )
        if path.startswith("/data/local-files/"):
            local = self._local_path(url.query)
            if local is not None:
                return self._read_local(local)
        if not self.label_studio_url or self.auth is None:
            raise FetchError(
                "config", "image is stored in Label Studio but LABEL_STUDIO_URL / an access token are not known"
            )
        target = self.label_studio_url + quote(path, safe="/!$&'()*+,;=:@~") + (f"?{url.query}" if url.query else "")
        return self._download(_parse(target), self.auth.header(), follow_redirects=True)

    def _file_route(self, url: Url) -> str | None:
        """The decoded file-route path of a relative or Label Studio URL (under Label Studio's own
        path prefix, if it has one), or None when it is not one of FILE_ROUTES."""
        path = url.path or ""
        prefix = (self._label_studio.path or "").rstrip("/") if url.host and self._label_studio else ""
        if prefix and not path.startswith(prefix + "/"):
            return None
        return _file_route(path[len(prefix):])

    def _local_path(self, query: str | None) -> Path | None:
        if self.document_root is None:
            return None
        relative = parse_qs(query or "").get("d", [""])[0]
        if not relative or "\x00" in relative:
            raise FetchError("bad_task", "local-files image path is empty or contains a NUL byte")
        try:
            candidate = (self.document_root / relative).resolve()
            if not candidate.is_relative_to(self.document_root):
                raise FetchError("bad_task", "local file path leaves the document root")
            return candidate if candidate.is_file() else None
        except (OSError, RuntimeError, ValueError) as exc:  # too long, symlink loop, ...
            raise FetchError("image_read", f"local image file cannot be read ({_reason(exc)})") from None

    def _read_local(self, path: Path) -> bytes:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            with os.fdopen(fd, "rb") as file:
                info = os.fstat(file.fileno())
                if not stat.S_ISREG(info.st_mode):
                    raise FetchError("bad_task", "local image path is not a regular file")
                if info.st_size > self.max_bytes:
                    raise FetchError(
                        "image_too_large", f"image file is {info.st_size} bytes, over the limit of {self.max_bytes}"
                    )
                data = file.read(self.max_bytes + 1)
        except OSError as exc:
            raise FetchError("image_read", f"local image file cannot be read ({_reason(exc)})") from None
        if len(data) > self.max_bytes:
            raise FetchError("image_too_large", f"image file is over the limit of {self.max_bytes} bytes")
        return data

    def _presigned(self, uri: str, task_id: int | None) -> bytes:
        if not self.label_studio_url or self.auth is None or task_id is None:
            raise FetchError("config", "cloud storage images need LABEL_STUDIO_URL, an access token and the task id")
        encoded = base64.urlsafe_b64encode(uri.encode()).decode().rstrip("=")
        url = _parse(f"{self.label_studio_url}/tasks/{int(task_id)}/presign/?fileuri={encoded}")
        return self._download(url, self.auth.header(), follow_redirects=True)

    def _external(self, url: Url) -> bytes:
        host = _canonical_host(url.host or "")
        if host not in self.allowed_hosts:
            raise FetchError("forbidden_host", f"image host {host!r} is not in ALLOWED_IMAGE_HOSTS")
        if host in METADATA_HOSTS:
            raise FetchError("forbidden_host", f"image host {host!r} is a link-local or metadata address")
        return self._download(url, {}, follow_redirects=False)

    def _download(self, url: Url, headers: dict, follow_redirects: bool) -> bytes:
        """GET ``url`` (redirects: the token only to Label Studio file routes), all within ``timeout``."""
        with _Deadline(self.timeout) as deadline:
            for _ in range(MAX_REDIRECTS + 1):
                status, location, body = self._get(url, headers, deadline)
                if follow_redirects and status in (301, 302, 303, 307, 308) and location:
                    url = _parse(urljoin(url.url, location))
                    if url.scheme not in ("http", "https"):
                        raise FetchError("image_fetch", "image download was redirected to a non-HTTP URI")
                    if not (self._is_label_studio(url) and self._file_route(url)):
                        headers = {}
                    continue
                if status != 200:
                    raise FetchError("image_fetch", f"image download answered HTTP {status}")
                return body
        raise FetchError("image_fetch", f"image download was redirected more than {MAX_REDIRECTS} times")

    def _get(self, url: Url, headers: dict, deadline: "_Deadline") -> tuple[int, str | None, bytes | None]:
        """(status, Location, body if 200) of one GET; connects only to checked addresses."""
        host, port = _canonical_host(url.host or ""), url.port or (443 if url.scheme == "https" else 80)
        addresses = _addresses(host, port, check=not self._is_label_studio(url))
        try:
            sock = _connect(addresses, deadline)
            connection = http.client.HTTPConnection(host, port)
            try:
                if url.scheme == "https":
                    sock = _tls_context().wrap_socket(sock, server_hostname=host)
                connection.sock = sock  # http.client never connects (nor resolves) by itself
                connection.request(
                    "GET", url.request_uri, headers={**headers, "Host": url.netloc, "Accept-Encoding": "identity"}
                )
                answer = connection.getresponse()
                if answer.status != 200:
                    return answer.status, answer.getheader("Location"), None
                return 200, None, self._body(answer, deadline)
            finally:
                connection.close()
                sock.close()
        except FetchError:
            raise
        except (OSError, http.client.HTTPException) as exc:
            if deadline.passed:
                raise FetchError("image_fetch", f"image download took over {self.timeout:g} s") from None
            raise FetchError("image_fetch", f"image download failed: {type(exc).__name__}") from None

    def _body(self, answer: http.client.HTTPResponse, deadline: "_Deadline") -> bytes:
        length = answer.length  # None unless the server sent a Content-Length (and no chunking)
        if length is not None and length > self.max_bytes:
            raise FetchError("image_too_large", f"image is {length} bytes, over the limit of {self.max_bytes}")
        chunks, total = [], 0
        while chunk := answer.read(1 << 16):
            total += len(chunk)
            if total > self.max_bytes:
                raise FetchError("image_too_large", f"image is over the limit of {self.max_bytes} bytes")
            chunks.append(chunk)
        if length is not None and total < length:  # http.client returns a cut body quietly
            raise socket.timeout("deadline passed") if deadline.passed else http.client.IncompleteRead(b"", length - total)
        return b"".join(chunks)


class _Deadline:
    """One download's deadline. requests' (and sockets') timeouts hold per read, so a server dripping
    a byte at a time never trips them; here a watchdog timer shuts every watched socket down when
    the deadline passes, which ends any blocked connect, handshake or read at once."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds
        self.expired = False
        self._socks: list[socket.socket] = []  # our own duplicates: never a closed, reused descriptor
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> "_Deadline":
        self._timer.start()
        return self

    def __exit__(self, *exc):
        self._timer.cancel()
        with self._lock:
            self.expired = True  # nothing may be watched any more
            for sock in self._socks:
                sock.close()
            self._socks.clear()

    @property
    def passed(self) -> bool:
        return self.expired or time.monotonic() >= self.end

    def remaining(self) -> float:
        """Seconds left; socket.timeout once the deadline has passed."""
        if self.passed:
            raise socket.timeout("deadline passed")
        return self.end - time.monotonic()

    def watch(self, sock: socket.socket):
        with self._lock:
            if self.expired:
                raise socket.timeout("deadline passed")
            self._socks.append(sock.dup())

    def _expire(self):
        with self._lock:
            self.expired = True
            for sock in self._socks:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def _parse(uri: str) -> Url:
    """The one URL parser for both checking and connecting (urllib3's, which requests uses too)."""
    if _UNSAFE.search(uri):
        raise FetchError("bad_task", "image URI contains a backslash, whitespace or control character")
    try:
        url = parse_url(uri)
    except (LocationParseError, ValueError):
        raise FetchError("bad_task", "image URI cannot be parsed") from None
    if url.auth is not None:
        raise FetchError("bad_task", "image URI must not carry a user name or password ('@' before the host)")
    return url


def _origin(url: Url) -> tuple:
    return url.scheme, _canonical_host(url.host or ""), url.port or (443 if url.scheme == "https" else 80)


def _canonical_host(host: str) -> str:
    """``[::1]`` -> ``::1``, ``Example.ORG.`` -> ``example.org``."""
    return host.strip().strip("[]").lower().rstrip(".")


def _file_route(path: str) -> str | None:
    """``path`` (percent-encoded, dot segments resolved by the parser) decoded, if it is a Label Studio
    file route with no dot segments, empty segments or odd characters left after decoding; else None."""
    decoded = unquote(path)
    if decoded == "/data/local-files":
        decoded += "/"
    segments = decoded.split("/")
    if _UNSAFE_DECODED.search(decoded) or "%" in decoded:  # "%": double encoding that a proxy may decode again
        return None
    if any(s in (".", "..") for s in segments) or "" in segments[1:-1]:
        return None
    if decoded == "/data/local-files/":
        return decoded
    return decoded if any(decoded.startswith(r) and len(decoded) > len(r) for r in FILE_ROUTES) else None


def _addresses(host: str, port: int, check: bool) -> list[tuple]:
    """(family, sockaddr) of every address ``host`` resolves to; with ``check``, FetchError if any is
    link-local, unspecified, multicast or a cloud metadata address (also inside IPv6 forms)."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise FetchError("image_fetch", f"image host {host!r} could not be resolved") from None
    if check and any(_forbidden(ipaddress.ip_address(info[4][0].split("%")[0])) for info in infos):
        raise FetchError("forbidden_host", f"image host {host!r} is a link-local or metadata address")
    return [(info[0], info[4]) for info in infos]


def _forbidden(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and any(ip in net for net in _IPV4_IN_IPV6) and int(ip) > 1:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None and _forbidden(embedded):
            return True
    return ip.is_link_local or ip.is_unspecified or ip.is_multicast or ip in METADATA_ADDRESSES


def _connect(addresses: list[tuple], deadline: _Deadline) -> socket.socket:
    """A socket connected to the first of ``addresses`` that answers, watched by ``deadline``."""
    error: OSError = OSError("no address")
    for family, sockaddr in addresses:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            deadline.watch(sock)
            sock.settimeout(deadline.remaining())
            sock.connect(sockaddr)
            sock.settimeout(deadline.remaining())
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error


@functools.lru_cache(maxsize=1)
def _tls_context() -> ssl.SSLContext:
    """Verifying context with the CA bundle requests would use."""
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or certifi.where()
    return ssl.create_default_context(cafile=bundle)


def _reason(exc: BaseException) -> str:
    """A short reason with no file name in it: the errno's name, else the exception type."""
    code = getattr(exc, "errno", None)
    return errno.errorcode.get(code, type(exc).__name__) if code else type(exc).__name__
