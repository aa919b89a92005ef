"""Which Label Studio a project lives in: one normalised spelling of its base URL.

Label Studio numbers projects, tasks and annotations from 1 in every installation, so two
installations connected to one database would share ids; every project row is keyed by this
identity as well as by its id.
"""
from __future__ import annotations

from urllib.parse import urlsplit

_LOOPBACK = {"localhost", "127.0.0.1", "::1", "[::1]"}
_DEFAULT_PORTS = {"http": 80, "https": 443}


def label_studio_identity(url: str | None) -> str:
    """``"HTTP://LocalHost:8080/"`` -> ``"http://localhost:8080"``; None or "" -> "" (unknown).

    Scheme and host are lower-cased, a default port and trailing slashes dropped, and loopback
    spellings (localhost, 127.0.0.1, ::1) made one, because Label Studio tells backends
    ``http://localhost:PORT`` while users often type 127.0.0.1. A path prefix is kept.
    Raises ValueError for a URL that is not http(s)://host[:port][/path].
    """
    if not url:
        return ""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if scheme not in _DEFAULT_PORTS or not host or parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError(f"not a Label Studio base URL (http(s)://host[:port]): {url[:80]!r}")
    host = "localhost" if host in _LOOPBACK else host
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port in (None, _DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"
