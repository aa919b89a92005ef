"""A throwaway PostgreSQL server for the tests.

:class:`PostgresServer` runs ``initdb`` into a fresh temporary folder, starts the cluster with
``pg_ctl`` on a free 127.0.0.1 port (unix sockets inside that folder, trust authentication,
durability switched off: nothing here must survive), creates the ``labeler`` database and, on
:meth:`stop`, shuts the server down and deletes the folder. :meth:`create_database` /
:meth:`drop_database` give each test a database of its own.

PostgreSQL refuses to run as root: as root, every server command runs as the ``postgres`` user
the Debian package creates (through ``runuser``), with the folder owned by that user; without
such a user a system user ``labeler-pgtest`` is created. The binaries are looked up in
``$PG_BIN``, then ``/usr/lib/postgresql/<newest>/bin``, then ``$PATH``.

Usable by hand, too::

    .venv/bin/python tests/postgres.py       # start one, print its URL, stop on Ctrl-C
"""
from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

START_TIMEOUT_S = 60
SUPERUSER = "labeler"
DATABASE = "labeler"
FALLBACK_OS_USER = "labeler-pgtest"


class PostgresError(RuntimeError):
    """The binaries are missing, or the server could not be initialised or started."""


def find_bin_dir() -> Path | None:
    """The folder with ``initdb`` and ``pg_ctl``, or None when PostgreSQL is not installed."""
    candidates = []
    if os.environ.get("PG_BIN"):
        candidates.append(Path(os.environ["PG_BIN"]))

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(p) for p in re.findall(r"\d+", Path(path).parts[-3])) or (0,)

    candidates += [Path(p).parent for p in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version, reverse=True)]
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _os_user() -> str | None:
    """The user that runs the server: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", FALLBACK_OS_USER):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", FALLBACK_OS_USER],
        check=True, capture_output=True,
    )
    return FALLBACK_OS_USER


class PostgresServer:
    """One throwaway cluster. ``url`` is the SQLAlchemy URL of its ``labeler`` database."""

    def __init__(self, bin_dir: Path | None = None):
        self.bin_dir = bin_dir or find_bin_dir()
        if self.bin_dir is None:
            raise PostgresError("PostgreSQL is not installed (no initdb in $PG_BIN, /usr/lib/postgresql/*/bin or $PATH)")
        self.os_user = _os_user()
        self.folder: Path | None = None
        self.port: int | None = None
        self.timings: dict[str, float] = {}

    # -- paths and commands ------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        assert self.folder is not None
        return self.folder / "data"

    @property
    def log_path(self) -> Path:
        assert self.folder is not None
        return self.folder / "server.log"

    def _run(self, *args: str, timeout: float = START_TIMEOUT_S) -> subprocess.CompletedProcess:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self.os_user is not None:
            command = ["runuser", "-u", self.os_user, "--", *command]
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        env.pop("PGDATA", None)
        return subprocess.run(
            command, cwd=self.folder, env=env, capture_output=True, text=True, timeout=timeout
        )

    def _tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no server log>"

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> "PostgresServer":
        """initdb + pg_ctl start + CREATE DATABASE; raises PostgresError with the log's tail."""
        t0 = time.monotonic()
        self.folder = Path(tempfile.mkdtemp(prefix="labeler-pg-"))
        if self.os_user is not None:
            shutil.chown(self.folder, user=self.os_user)
        done = self._run(
            "initdb", "-D", str(self.data_dir), "-U", SUPERUSER, "--auth=trust", "--encoding=UTF8",
            "--no-locale", "--no-sync",
        )
        if done.returncode != 0:
            self._cleanup()
            raise PostgresError(f"initdb failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        self.timings["initdb"] = time.monotonic() - t0
        last = ""
        for _ in range(5):  # another process may take the free port before the server binds it
            self.port = _free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories='{self.folder}' "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
            )
            done = self._run("pg_ctl", "start", "-D", str(self.data_dir), "-l", str(self.log_path), "-w",
                             "-t", str(START_TIMEOUT_S), "-o", options)
            if done.returncode == 0:
                break
            last = f"pg_ctl start failed ({done.returncode}): {done.stderr.strip()}\n{self._tail()}"
            if "Address already in use" not in last:
                break
        else:
            done = None
        if done is None or done.returncode != 0:
            self._cleanup()
            raise PostgresError(last)
        try:
            self.create_database(DATABASE)
        except Exception as exc:
            self.stop()
            raise PostgresError(f"could not create the database: {exc}\n{self._tail()}") from exc
        self.timings["start"] = time.monotonic() - t0
        return self

    def stop(self) -> None:
        """Stop the server (fast shutdown; immediate when that hangs) and delete its folder."""
        if self.folder is None:
            return
        if (self.data_dir / "postmaster.pid").exists():
            done = self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "30")
            if done.returncode != 0:
                self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "immediate", "-w", "-t", "30")
        self._cleanup()

    def _cleanup(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
        self.folder = None

    def __enter__(self) -> "PostgresServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- databases -------------------------------------------------------------------------------

    def url_for(self, database: str, driver: str = "psycopg") -> str:
        """SQLAlchemy URL of one database on this server (``postgresql+psycopg://...``)."""
        return f"postgresql+{driver}://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    @property
    def url(self) -> str:
        return self.url_for(DATABASE)

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=SUPERUSER, dbname="postgres",
                             autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql)

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database (a fresh unique name by default); returns its name."""
        name = name or f"t_{uuid.uuid4().hex[:16]}"
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"database names here are lower-case identifiers, got {name!r}")
        self._admin(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        """Drop a database, closing whatever connections are still open on it."""
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    with PostgresServer() as server:
        print(f"DATABASE_URL={server.url}  (started in {server.timings['start']:.1f} s; Ctrl-C stops it)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
