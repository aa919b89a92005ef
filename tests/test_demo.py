"""``labeler demo``: Label Studio + backend + a demo project pre-labelled by the backend; a rerun
reuses everything (same login, same project, nothing imported or predicted twice).

The demo is the session's `demo_run` (tests/conftest.py), shared with tests/test_browser.py.
"""
from __future__ import annotations

import pytest
from label_studio_sdk import LabelStudio

pytestmark = pytest.mark.labelstudio  # the demo starts Label Studio; one test runs `labeler demo` itself


def test_demo_starts_and_pre_labels_every_task(demo_run):
    demo = demo_run.demo
    ls = LabelStudio(base_url=demo.studio.url, api_key=demo.studio.token)
    tasks = list(ls.tasks.list(project=demo.project_id))
    assert len(tasks) == 7  # 5 opacity + 2 clear
    predictions = ls.predictions.list(project=demo.project_id)
    assert sorted(p.task for p in predictions) == sorted(t.id for t in tasks)
    assert len({p.model_version for p in predictions}) == 1 and "layercam@features" in predictions[0].model_version
    assert "+roi:" in predictions[0].model_version  # the demo's ROI model, trained on the images' lungs
    assert any(r["type"] == "brushlabels" for p in predictions for r in p.result)
    project = ls.projects.get(id=demo.project_id)
    assert project.model_version == predictions[0].model_version  # the Data Manager's score column shows its scores


def test_demo_rerun_reuses_login_project_and_predictions(demo_run):
    first = demo_run.demo
    login = (first.studio.username, first.studio.password, first.studio.token)
    second = demo_run.restart()
    assert (second.studio.username, second.studio.password, second.studio.token) == login
    assert second.project_id == first.project_id
    ls = LabelStudio(base_url=second.studio.url, api_key=second.studio.token)
    assert len(list(ls.tasks.list(project=second.project_id))) == 7
    assert len(ls.predictions.list(project=second.project_id)) == 7
    assert [m.url for m in ls.ml.list(project=second.project_id)] == [second.backend_url]


def test_demo_command_stops_everything_on_sigterm(tmp_path):
    """`labeler demo` killed (SIGTERM, as `kill` and `timeout` send) stops Label Studio and the backend."""
    import os
    import re
    import signal
    import subprocess
    import sys
    from pathlib import Path

    import httpx

    from conftest import prepare_demo_folder

    folder = prepare_demo_folder(tmp_path / "demo")
    labeler = Path(sys.executable).with_name("labeler")
    process = subprocess.Popen(
        [str(labeler), "demo", "--out", str(folder), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "COLUMNS": "200"},
    )
    output = []
    try:
        for line in process.stdout:
            output.append(line)
            if "ML backend" in line:
                break
        text = "".join(output)
        studio = re.search(r"Label Studio\s+(http://127\.0\.0\.1:\d+)", text)
        backend = re.search(r"ML backend\s+(http://127\.0\.0\.1:\d+)", text)
        assert studio and backend, text
        assert httpx.get(f"{backend.group(1)}/health").status_code == 200
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    for url in (studio.group(1), backend.group(1)):
        with pytest.raises(httpx.TransportError):
            httpx.get(url, timeout=5)
