"""The project commands fail with one clear line when Label Studio or their inputs are missing."""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

from labeler.cli import app
from labeler.studio import free_port


def run(args, env):
    result = CliRunner().invoke(app, args, env={"LABEL_STUDIO_URL": "", "LABEL_STUDIO_API_KEY": "", **env})
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    return result.exit_code, lines, result.output


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["sync"], {}, "error: no project given: pass --project or set LABEL_STUDIO_PROJECT"),
        (["sync", "--project", "3"], {}, "error: Label Studio is not set"),
        (["import", "x.png", "--project", "3"], {}, "error: --document-root (Label Studio's LOCAL_FILES_DOCUMENT_ROOT) is required"),
        (["init", "--model", "missing.keras"], {}, "error: missing.keras: no model spec found"),
    ],
)
def test_missing_settings_are_named(args, env, message):
    code, lines, output = run(args, env)
    assert code == 2 and len(lines) == 1 and lines[0].startswith(message), output


def test_an_unreachable_label_studio_is_one_line(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    code, lines, output = run(["sync", "--project", "3", "--label-studio-url", url, "--api-key", "k", "--database-url", f"sqlite:///{tmp_path}/x.db"], {})
    assert code == 2 and lines == ["error: cannot reach Label Studio: ConnectError"], output
    assert "Traceback" not in output


def test_label_studio_refusals_are_one_line(label_studio, tmp_path):
    code, lines, output = run(
        ["sync", "--project", "999999", "--label-studio-url", label_studio.url, "--api-key", label_studio.token,
         "--database-url", f"sqlite:///{tmp_path}/x.db"],
        {},
    )
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: Label Studio answered HTTP 404"), output
