"""A database that cannot be opened, migrated or written stops ``labeler-backend`` and the
``labeler`` commands with one ``error:`` line (password masked) and a non-zero exit, never a
traceback. Both run as real subprocesses with this checkout on PYTHONPATH."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from db.engine import DatabaseUnavailable
from db.migrating import migrate, open_database
from labeler.workspace import Workspace

pytestmark = pytest.mark.slow  # every test starts labeler-backend or labeler as a real process (TensorFlow import)

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PASSWORD = "pw-s3cret-91"
CLOSED_PORT = f"postgresql+psycopg://labeler:{PASSWORD}@127.0.0.1:1/labeler"


def bad_databases(folder: Path) -> dict[str, tuple[str, str]]:
    """name -> (URL, a part of the expected message)."""
    text = folder / "notes.db"
    text.write_text("not a database\n")
    blocker = folder / "a-file"
    blocker.write_text("")
    migrated = folder / "migrated.db"
    migrate(f"sqlite:///{migrated}")
    newer = folder / "newer.db"
    with sqlite3.connect(newer) as conn:  # migrated by a later version of this software
        conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
        conn.execute("INSERT INTO alembic_version VALUES ('0099')")
    return {
        "unknown dialect": ("nosuchdb://x", "unknown kind of database 'nosuchdb'"),
        "not a URL": ("no url at all", "expected a URL like"),
        "closed port": (CLOSED_PORT, "Connection refused"),
        "missing driver": (f"mysql://u:{PASSWORD}@127.0.0.1/x", "driver is not installed"),
        "folder cannot be made": (f"sqlite:///{blocker / 'sub' / 'x.db'}", "cannot create its folder"),
        "text file": (f"sqlite:///{text}", "file is not a database"),
        "read-only": (f"sqlite:///file:{migrated}?mode=ro&uri=true", "attempt to write a readonly database"),
        "newer schema": (f"sqlite:///{newer}", "Can't locate revision identified by '0099'"),
    }


def assert_one_error_line(done: subprocess.CompletedProcess, expected: str):
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-2000:]
    assert "Traceback" not in output and PASSWORD not in output
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and expected in lines[0], done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == lines[0]


def run(command: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3", **env}
    return subprocess.run(command, env=full, cwd=cwd, capture_output=True, text=True, timeout=120)


CASES = ["unknown dialect", "not a URL", "closed port", "missing driver", "folder cannot be made", "text file",
         "read-only", "newer schema"]


@pytest.mark.parametrize("case", CASES)
def test_open_database_raises_one_line_without_password(case, tmp_path):
    url, expected = bad_databases(tmp_path)[case]
    with pytest.raises(DatabaseUnavailable) as info:
        open_database(url)
    message = str(info.value)
    assert expected in message and "\n" not in message and PASSWORD not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_the_password_is_masked_in_the_url_shown(tmp_path):
    with pytest.raises(DatabaseUnavailable) as info:
        open_database(CLOSED_PORT)
    assert str(info.value).startswith("database postgresql+psycopg://labeler:***@127.0.0.1:1/labeler: ")


@pytest.mark.parametrize("case", ["unknown dialect", "closed port", "text file", "read-only", "newer schema"])
def test_backend_stops_before_gunicorn_with_one_line(case, tmp_path):
    url, expected = bad_databases(tmp_path)[case]
    done = run([str(BIN / "labeler-backend")], {"MODEL_PATH": "m.keras", "DATABASE_URL": url, "BACKEND_PORT": "0"}, tmp_path)
    assert_one_error_line(done, expected)
    assert "gunicorn" not in done.stderr.lower()


@pytest.mark.parametrize("case", ["unknown dialect", "not a URL", "closed port", "text file"])
def test_stats_with_a_bad_database_is_one_line(case, tmp_path):
    url, expected = bad_databases(tmp_path)[case]
    done = run([str(BIN / "labeler"), "stats", "--project", "1", "--out", str(tmp_path / "stats")], {"DATABASE_URL": url}, tmp_path)
    assert_one_error_line(done, expected)


@pytest.mark.parametrize("case", ["unknown dialect", "closed port", "folder cannot be made", "text file"])
def test_export_with_a_bad_database_is_one_line(case, tmp_path):
    url, expected = bad_databases(tmp_path)[case]
    done = run([str(BIN / "labeler"), "export", str(tmp_path / "out"), "--project", "1", "--database-url", url], {}, tmp_path)
    assert_one_error_line(done, expected)
    assert not (tmp_path / "out").exists()


def test_a_read_only_database_serves_the_reading_commands_only(tmp_path):
    url, expected = bad_databases(tmp_path)["read-only"]
    with pytest.raises(DatabaseUnavailable, match=expected):
        Workspace(database_url=url).sessions  # sync, prelabel: they write
    with Workspace(database_url=url, writes=False).sessions() as session:  # export, stats, import
        assert session.execute(sa.text("SELECT count(*) FROM installation")).scalar() == 1
    done = run([str(BIN / "labeler"), "export", str(tmp_path / "out"), "--project", "1", "--database-url", url], {}, tmp_path)
    assert_one_error_line(done, "project 1 is not in the database")  # got past opening it
