"""The CLI's one error handler sits on the command group: every command, including one added
later with no decorator, ends an expected failure with one ``error:`` line and exit code 2, and
leaves a bug's exception alone. Through ``CliRunner`` and through the installed ``main()``."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import typer
from typer.testing import CliRunner

from labeler.cli import OneLineErrors, app

REPO = Path(__file__).resolve().parents[1]


def group_with(failure: BaseException) -> typer.Typer:
    """A fresh app on the same group class with two plain commands; `fail` raises `failure`."""
    cli = typer.Typer(cls=OneLineErrors)

    @cli.command()
    def fail():
        raise failure

    @cli.command()
    def ok():
        print("fine")

    return cli


def test_an_undecorated_command_gets_one_error_line_and_exit_2():
    for failure, message in [
        (ValueError("--size must be positive"), "error: --size must be positive"),
        (FileNotFoundError("x.png: no such file"), "error: x.png: no such file"),
        (PermissionError("out: not writable"), "error: out: not writable"),
    ]:
        result = CliRunner().invoke(group_with(failure), ["fail"])
        assert result.exit_code == 2, result.output
        assert result.stderr.strip().splitlines() == [message]
        assert result.exception is None or isinstance(result.exception, SystemExit)


def test_label_studio_failures_are_named_not_traced():
    import httpx
    from label_studio_sdk.core.api_error import ApiError

    refused = CliRunner().invoke(group_with(ApiError(status_code=403, body={"detail": "no rights"})), ["fail"])
    assert refused.exit_code == 2
    assert refused.stderr.strip().splitlines() == ["error: Label Studio answered HTTP 403: no rights"]
    down = CliRunner().invoke(group_with(httpx.ConnectError("refused")), ["fail"])
    assert down.exit_code == 2
    assert down.stderr.strip().splitlines() == ["error: cannot reach Label Studio: ConnectError"]


def test_a_bug_keeps_its_exception_and_a_good_command_is_untouched():
    result = CliRunner().invoke(group_with(KeyError("bug")), ["fail"])
    assert isinstance(result.exception, KeyError) and result.exit_code == 1
    assert "error:" not in result.stderr
    fine = CliRunner().invoke(group_with(KeyError("bug")), ["ok"])
    assert fine.exit_code == 0 and fine.stdout == "fine\n"


def test_every_labeler_command_runs_through_the_handler():
    command = typer.main.get_command(app)
    assert isinstance(command, OneLineErrors) and len(command.commands) >= 10


def test_the_installed_entry_point_prints_the_same_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-c", "from labeler.cli import main; main()", "explain", "gone.png",
         "--model", "missing.keras", "--out", str(tmp_path / "out")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == "error: missing.keras: no such model file or folder"
