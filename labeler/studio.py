"""A real Label Studio server on loopback, for the demo and the end-to-end tests.

Label Studio is installed in its OWN virtual environment (never the product's: it pins Django,
numpy and the SDK its own way), cached under ``<repo>/.cache/label-studio-venv`` and reused as
long as the version marker matches. Each :class:`LabelStudioServer` gets a fresh data directory,
a fresh admin user and a fresh legacy API token, listens on a free loopback port only, and is
configured to stay offline (no Sentry, no version check, no analytics).

Behaviour this relies on is recorded in ``shared/docs/label-studio-facts.md`` (measured on 1.23.2).

Usable by hand, too::

    .venv/bin/python -m labeler.studio               # install (if needed), start, print url/token
"""
from __future__ import annotations

import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from labeler.posting import FAST_IMPORT_FLAG

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache"
LABEL_STUDIO_VERSION = "1.23.2"
DEFAULT_VENV = CACHE / "label-studio-venv"
#: A migrated, user-less database copied into every fresh data dir (skips ~30 s of migrations).
DEFAULT_TEMPLATE = CACHE / "label-studio-template"
PYTHON = os.environ.get("LABEL_STUDIO_TEST_PYTHON", "python3.11")
INSTALL_TIMEOUT_S = 1800
START_TIMEOUT_S = 180.0
STOP_GRACE_S = 15.0


class LabelStudioError(RuntimeError):
    """Installing or starting the test server failed; the message carries the log's tail."""


def _tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<no log at {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


def _marker(venv_dir: Path) -> Path:
    return venv_dir / ".label-studio-installed"


def _executable(venv_dir: Path) -> Path:
    return venv_dir / "bin" / "label-studio"


def _python(venv_dir: Path) -> Path:
    return venv_dir / "bin" / "python"


def ensure_installed(venv_dir: Path = DEFAULT_VENV) -> Path:
    """Create ``venv_dir`` with label-studio==LABEL_STUDIO_VERSION unless it already has it.

    Returns the path of the venv's ``label-studio`` executable. A marker file recording the
    version makes reruns instant; a half-finished venv (no marker) is rebuilt from scratch.
    Output goes to ``<venv_dir>.install.log``; a failure raises with that log's tail.
    """
    venv_dir = Path(venv_dir).resolve()
    exe, marker = _executable(venv_dir), _marker(venv_dir)
    if exe.exists() and marker.exists() and marker.read_text().strip() == LABEL_STUDIO_VERSION:
        return exe

    venv_dir.parent.mkdir(parents=True, exist_ok=True)
    log_path = venv_dir.with_name(venv_dir.name + ".install.log")
    lock = _FileLock(venv_dir.with_name(venv_dir.name + ".lock"))
    with lock:
        # another process may have finished the install while we waited for the lock
        if exe.exists() and marker.exists() and marker.read_text().strip() == LABEL_STUDIO_VERSION:
            return exe
        if venv_dir.exists():
            shutil.rmtree(venv_dir)
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
        env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
        commands = [
            [PYTHON, "-m", "venv", str(venv_dir)],
            [str(_python(venv_dir)), "-m", "pip", "install", "--upgrade", "pip"],
            [str(_python(venv_dir)), "-m", "pip", "install", f"label-studio=={LABEL_STUDIO_VERSION}"],
        ]
        started = time.monotonic()
        with open(log_path, "w") as log:
            for cmd in commands:
                log.write(f"$ {' '.join(cmd)}\n")
                log.flush()
                try:
                    rc = subprocess.run(
                        cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                        env=env, timeout=INSTALL_TIMEOUT_S,
                    ).returncode
                except (OSError, subprocess.TimeoutExpired) as exc:
                    log.write(f"\n{exc!r}\n")
                    rc = -1
                if rc != 0:
                    log.flush()
                    raise LabelStudioError(
                        f"installing label-studio=={LABEL_STUDIO_VERSION} into {venv_dir} failed "
                        f"(exit {rc} from {cmd[:3]}); log {log_path}:\n{_tail(log_path)}"
                    )
            log.write(f"\ninstalled in {time.monotonic() - started:.1f} s\n")
        if not exe.exists():
            raise LabelStudioError(f"{exe} missing after install; log {log_path}:\n{_tail(log_path)}")
        marker.write_text(LABEL_STUDIO_VERSION + "\n")
    return exe


class _FileLock:
    """Advisory lock so two test sessions never build the same venv/template at once."""

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    def __enter__(self):
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        import fcntl

        assert self._fd is not None
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


# --------------------------------------------------------------------------------------------
# server
# --------------------------------------------------------------------------------------------

#: Inherited variables passed through to the server; everything else is dropped, because
#: Label Studio also reads bare names (HOST, PORT, USERNAME, PASSWORD, DEBUG, ...) via get_env.
_PASSTHROUGH = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "SYSTEMROOT")
_DEAD_PROXY = "http://127.0.0.1:9"  # discard port: any outbound HTTP(S) attempt fails at once
_STARTED_RE = "Starting development server at http://"


def free_port() -> int:
    """A port the kernel just reported free on 127.0.0.1 (may be taken again before use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http_get_json(url: str, token: str | None = None, timeout: float = 2.0):
    """GET url without any proxy; returns (status, parsed JSON or None)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, headers={"Authorization": f"Token {token}"} if token else {})
    try:
        with opener.open(request, timeout=timeout) as response:
            body = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (urllib.error.URLError, OSError, http.client.HTTPException):  # not listening (yet)
        return None, None
    try:
        return status, json.loads(body)
    except ValueError:
        return status, None


def server_env(
    *,
    data_dir: Path,
    home: Path,
    document_root: Path,
    username: str,
    password: str,
    token: str,
    secret_key: str,
    host_url: str | None,
    offline: bool = True,
) -> dict[str, str]:
    """The complete environment of a test server (see shared/docs/label-studio-facts.md)."""
    env = {k: os.environ[k] for k in _PASSTHROUGH if k in os.environ}
    env.update(
        {
            # every file it writes stays inside the session's temp dir (no ~/.local, ~/.config)
            "HOME": str(home),
            "XDG_DATA_HOME": str(home / ".local" / "share"),
            "XDG_CACHE_HOME": str(home / ".cache"),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "TMPDIR": str(home / "tmp"),
            "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
            # given, so nothing writes <data_dir>/.env
            "SECRET_KEY": secret_key,
            # the admin user and its legacy token (applied when the user/org is created)
            "LABEL_STUDIO_USERNAME": username,
            "LABEL_STUDIO_PASSWORD": password,
            "LABEL_STUDIO_USER_TOKEN": token,
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
            # /data/local-files/?d=... served from here
            "LOCAL_FILES_SERVING_ENABLED": "true",
            "LOCAL_FILES_DOCUMENT_ROOT": str(document_root),
            # an ML backend on 127.0.0.1 is refused (403) unless BOTH are off
            "ML_BLOCK_LOCAL_IP": "false",
            "SSRF_PROTECTION_ENABLED": "false",
            # no phoning home
            "SENTRY_DSN": "",
            "FRONTEND_SENTRY_DSN": "",
            "LATEST_VERSION_CHECK": "false",
            "COLLECT_ANALYTICS": "false",
            "FEATURE_FLAGS_OFFLINE": "true",
            # bulk prediction imports at a constant cost (see labeler.posting.FAST_IMPORT_FLAG)
            FAST_IMPORT_FLAG: "true",
            # collect_versions() runs `git log` next to the package, i.e. inside this repo
            "GIT_CEILING_DIRECTORIES": str(REPO.parent),
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    if host_url:
        # LABEL_STUDIO_HOST makes local-files task URLs ABSOLUTE ("<host>/data/local-files/?d=...")
        # while uploads stay relative; without it ML backends get hostname http://localhost:PORT.
        env["LABEL_STUDIO_HOST"] = host_url
    if offline:
        # belt and braces: anything that still tries the internet fails fast; loopback is exempt
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            env[name] = _DEAD_PROXY
        env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost,::1"
    return env


def ensure_template(exe: Path, template_dir: Path = DEFAULT_TEMPLATE) -> Path:
    """A migrated database with no user, no organization and no data, built once per version.

    ``label-studio start`` migrates (~30 s on a new sqlite file) BEFORE it creates the user and
    the organization, so a copy of a database migrated by ``label-studio version`` is exactly
    what a fresh start would have at that point: every session still gets a new user, token,
    organization and legacy-token setting. Returns the template's sqlite file.
    """
    template_dir = Path(template_dir).resolve()
    db, marker = template_dir / "label_studio.sqlite3", template_dir / ".version"
    if db.exists() and marker.exists() and marker.read_text().strip() == LABEL_STUDIO_VERSION:
        return db
    with _FileLock(template_dir.with_name(template_dir.name + ".lock")):
        if db.exists() and marker.exists() and marker.read_text().strip() == LABEL_STUDIO_VERSION:
            return db
        work = Path(tempfile.mkdtemp(prefix="ls-template-", dir=template_dir.parent))
        try:
            home, data = work / "home", work / "data"
            (home / "tmp").mkdir(parents=True)
            env = server_env(
                data_dir=data, home=home, document_root=work, username="", password="", token="",
                secret_key=secrets.token_urlsafe(40), host_url=None,
            )
            for name in ("LABEL_STUDIO_USERNAME", "LABEL_STUDIO_PASSWORD", "LABEL_STUDIO_USER_TOKEN"):
                env.pop(name)
            log_path = work / "migrate.log"
            with open(log_path, "w") as log:
                try:
                    rc = subprocess.run(
                        [str(exe), "version"], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL, timeout=600,
                    ).returncode
                except subprocess.TimeoutExpired as exc:
                    log.write(f"\n{exc!r}\n")
                    rc = -1
            if rc != 0 or not (data / "label_studio.sqlite3").exists():
                raise LabelStudioError(f"migrating a template database failed (exit {rc}):\n{_tail(log_path)}")
            if template_dir.exists():
                shutil.rmtree(template_dir)
            template_dir.mkdir(parents=True)
            shutil.copy2(data / "label_studio.sqlite3", template_dir / "label_studio.sqlite3.part")
            os.replace(template_dir / "label_studio.sqlite3.part", db)
            shutil.copy2(log_path, template_dir / "migrate.log")
            marker.write_text(LABEL_STUDIO_VERSION + "\n")
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return db


class LabelStudioServer:
    """A Label Studio server on 127.0.0.1 with a fresh data dir, admin user and legacy token.

    >>> with LabelStudioServer() as ls:
    ...     LabelStudio(base_url=ls.url, api_key=ls.token)

    Attributes: ``url`` (``http://127.0.0.1:PORT``), ``port``, ``token`` (40-char legacy token,
    ``Authorization: Token <token>``), ``username``, ``password``, ``document_root`` (local-files
    storage paths must be sub-folders of it), ``data_dir``, ``log_path``, ``env`` (what it runs
    with), ``timings`` (seconds: ``install``, ``template``, ``start``).

    ``set_host=True`` also sets LABEL_STUDIO_HOST to ``url``; by default it is unset, as in the
    measurements of the facts doc: task image URLs are then relative (``/data/upload/...``,
    ``/data/local-files/?d=...``) and /setup tells ML backends ``hostname: http://localhost:PORT``.
    ``use_template`` (default on; LABEL_STUDIO_TEST_NO_TEMPLATE=1 turns it off) starts from a
    cached migrated database: ~3 s instead of ~35 s. ``offline`` points the server's HTTP(S)
    proxy at a closed loopback port, loopback exempt, so it cannot reach the internet.
    """

    def __init__(
        self,
        venv_dir: Path = DEFAULT_VENV,
        workdir: Path | None = None,
        *,
        use_template: bool | None = None,
        template_dir: Path = DEFAULT_TEMPLATE,
        start_timeout: float = START_TIMEOUT_S,
        offline: bool = True,
        set_host: bool = False,
        port_attempts: int = 3,
        port: int | None = None,
    ):
        self.venv_dir = Path(venv_dir)
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="label-studio-test-"))
        if use_template is None:
            use_template = os.environ.get("LABEL_STUDIO_TEST_NO_TEMPLATE", "") in ("", "0")
        self.use_template = use_template
        self.template_dir = Path(template_dir)
        self.start_timeout = start_timeout
        self.offline = offline
        self.set_host = set_host
        self.port_attempts = 1 if port else port_attempts
        self.requested_port = port

        self.username = "admin@example.com"
        self.password = secrets.token_urlsafe(16)
        self.token = secrets.token_hex(20)  # 40 hex chars, like a DRF authtoken key
        self.credentials = self.workdir / "credentials.json"
        if self.credentials.exists():  # a kept workdir: its user exists, with these
            saved = json.loads(self.credentials.read_text())
            self.username, self.password, self.token = saved["username"], saved["password"], saved["token"]
        self.data_dir = self.workdir / "data"
        self.home = self.workdir / "home"
        self.document_root = self.workdir / "documents"
        self.log_path = self.workdir / "label-studio.log"
        self.port: int | None = None
        self.url: str | None = None
        self.env: dict[str, str] = {}
        self.timings: dict[str, float] = {}
        self._proc: subprocess.Popen | None = None
        self._log = None

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> "LabelStudioServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "LabelStudioServer":
        try:
            t0 = time.monotonic()
            exe = ensure_installed(self.venv_dir)
            self.timings["install"] = time.monotonic() - t0
            for path in (self.data_dir, self.home / "tmp", self.document_root):
                path.mkdir(parents=True, exist_ok=True)
            if self.use_template and not (self.data_dir / "label_studio.sqlite3").exists():
                t0 = time.monotonic()
                template_db = ensure_template(exe, self.template_dir)
                self.timings["template"] = time.monotonic() - t0
                shutil.copy2(template_db, self.data_dir / "label_studio.sqlite3")
            last_error = None
            for _attempt in range(self.port_attempts):
                t0 = time.monotonic()
                try:
                    self._start_once(exe, self.requested_port or free_port())
                except _PortTaken as exc:  # lost the race for the port: LS moved to port+1
                    last_error = exc
                    self._terminate()
                    continue
                self.timings["start"] = time.monotonic() - t0
                if not self._own_workdir and not self.credentials.exists():
                    self.credentials.write_text(json.dumps(
                        {"username": self.username, "password": self.password, "token": self.token}))
                    self.credentials.chmod(0o600)
                return self
            raise LabelStudioError(f"could not start on a port of our own: {last_error}\n{_tail(self.log_path)}")
        except BaseException:
            self.stop(cleanup=False)  # keep the log and data dir for a look
            raise

    def _start_once(self, exe: Path, port: int) -> None:
        url = f"http://127.0.0.1:{port}"
        self.env = server_env(
            data_dir=self.data_dir, home=self.home, document_root=self.document_root,
            username=self.username, password=self.password, token=self.token,
            secret_key=secrets.token_urlsafe(40), host_url=url if self.set_host else None, offline=self.offline,
        )
        cmd = [str(exe), "start", "--no-browser", "--internal-host", "127.0.0.1", "-p", str(port)]
        self._log = open(self.log_path, "a")
        self._log.write(f"$ {' '.join(cmd)}\n")
        self._log.flush()
        log_start = self.log_path.stat().st_size
        self._proc = subprocess.Popen(
            cmd, cwd=self.workdir, env=self.env, stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True,  # own process group, for stop()
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + self.start_timeout
        while True:
            rc = self._proc.poll()
            if rc is not None and "That port is already in use" in self._log_since(log_start):
                # taken between LS's own check (connect to localhost:PORT) and runserver's bind
                raise _PortTaken(f"port {port} was taken while label-studio started")
            if rc is not None:
                raise LabelStudioError(f"label-studio exited with {rc} while starting; log {self.log_path}:\n"
                                       f"{_tail(self.log_path)}")
            announced = self._announced_port(log_start)
            if announced is not None and announced != port:
                raise _PortTaken(f"asked for {port}, label-studio took {announced}")
            status, body = _http_get_json(f"{url}/health")
            if status == 200 and isinstance(body, dict) and body.get("status") == "UP":
                # is it OURS? only our server knows this freshly generated token
                status, me = _http_get_json(f"{url}/api/current-user/whoami", self.token)
                if status == 200 and isinstance(me, dict) and me.get("email") == self.username:
                    self.port, self.url = port, url
                    return
                # else someone else answers there and ours has not bound yet: keep watching
            if time.monotonic() > deadline:
                raise LabelStudioError(
                    f"label-studio did not answer GET {url}/health with status UP (and our token) within "
                    f"{self.start_timeout:.0f} s; log {self.log_path}:\n{_tail(self.log_path)}"
                )
            time.sleep(0.25)

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                f.seek(offset)
                return f.read()
        except OSError:
            return ""

    def _announced_port(self, offset: int) -> int | None:
        """The port runserver says it started on (LS moves to port+1 by itself if PORT is busy)."""
        text = self._log_since(offset)
        at = text.rfind(_STARTED_RE)
        if at < 0:
            return None
        rest = text[at + len(_STARTED_RE):].split("/", 1)[0]  # 127.0.0.1:PORT
        try:
            return int(rest.rsplit(":", 1)[1])
        except (IndexError, ValueError):
            return None

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(10)
        elif proc is not None:
            # the leader is gone; make sure nothing it spawned in its group lingers
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self, cleanup: bool = True) -> None:
        """Terminate the process group (SIGTERM, then SIGKILL after a grace period). Idempotent.

        Then removes the temp dir it created (data, documents, log) unless ``cleanup`` is false
        or LABEL_STUDIO_TEST_KEEP=1 is set; a ``workdir`` given by the caller is never removed.
        """
        self._terminate()
        keep = os.environ.get("LABEL_STUDIO_TEST_KEEP", "") not in ("", "0")
        if cleanup and not keep and self._own_workdir and self.workdir.exists():
            shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __repr__(self) -> str:
        return f"<LabelStudioServer {self.url or 'not started'} log={self.log_path}>"


class _PortTaken(Exception):
    pass


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it if the test process dies without calling stop()."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


if __name__ == "__main__":  # manual use: install, start, print the coordinates, wait for Ctrl-C
    with LabelStudioServer() as server:
        print(json.dumps({"url": server.url, "token": server.token, "username": server.username,
                          "password": server.password, "document_root": str(server.document_root),
                          "log": str(server.log_path), "timings": server.timings}, indent=2))
        if "--check" not in sys.argv:
            try:
                signal.pause()
            except KeyboardInterrupt:
                pass
