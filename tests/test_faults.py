"""Faults against a real Label Studio: crashes between the two writes of ``labeler prelabel``,
kill -9 of ``prelabel`` / ``import`` / ``sync`` at random points, and Label Studio stopped and
restarted during ``prelabel``. The invariant each time: after a rerun, Label Studio and our
database hold the same predictions (every task exactly one), and nothing acknowledged is lost.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import keras
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from db import repository
from db.engine import make_engine, session_factory
from db.migrating import migrate
from db.schema import AnnotationRevision, Prediction, Project, Task
from explain.labelstudio.results import choices_result
from labeler.cli import app, prelabel_settings
from labeler import posting
from labeler.prelabeling import prelabel_project
from labeler.studio import LabelStudioServer, free_port
from labeler.synthetic import write_dataset
from labeler.workspace import Workspace
from models.classifiers import build_small_cnn
from models.loading import save_classifier

pytestmark = pytest.mark.labelstudio  # one test starts, stops and restarts a Label Studio of its own

CLASSES = ("covid", "normal", "pneumonia")
LABELER = str(Path(sys.executable).parent / "labeler")


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    folder = tmp_path_factory.mktemp("faults")
    keras.utils.set_random_seed(2)
    model, spec = build_small_cnn(CLASSES, input_size=(32, 32), filters=(4, 8))
    write_dataset(folder / "data", per_class=6, size=64, seed=5)  # 12 images
    return {"folder": folder, "model": save_classifier(model, spec, folder / "cnn.keras")}


def cli(env, *args, code=0):
    result = CliRunner().invoke(app, [str(a) for a in args], env=env, catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.output


def new_project(studio, material, tmp_path, title):
    env = {
        "LABEL_STUDIO_URL": studio.url, "LABEL_STUDIO_API_KEY": studio.token,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'labeler.db'}", "LOCAL_FILES_DOCUMENT_ROOT": str(studio.document_root),
    }
    migrate(env["DATABASE_URL"])  # so that the checks can read it before the first command writes
    output = cli(env, "init", "--model", material["model"], "--title", title)
    env["LABEL_STUDIO_PROJECT"] = output.split("LABEL_STUDIO_PROJECT=")[1].split()[0]
    return env


def prediction_tasks(ls, env) -> tuple[set[int], set[int]]:
    """Ids of the tasks with a prediction in Label Studio (checked: at most one each) and in our database."""
    project = int(env["LABEL_STUDIO_PROJECT"])
    in_studio = Counter(p.task for p in ls.predictions.list(project=project))
    assert set(in_studio.values()) <= {1}, in_studio
    with session_factory(make_engine(env["DATABASE_URL"]))() as session:
        in_database = set(session.scalars(
            select(Task.ls_task_id).join(Prediction, Prediction.task_id == Task.id).join(Project)
            .where(Project.ls_project_id == project, Task.deleted_at.is_(None))
        ))
    return set(in_studio), in_database


def assert_agree(ls, env) -> int:
    """Label Studio's and our database's predictions are of the same tasks, one per task in Label
    Studio; returns how many tasks have one."""
    in_studio, in_database = prediction_tasks(ls, env)
    assert in_studio == in_database
    return len(in_database)


class Crash(BaseException):
    """What a kill -9 leaves: the process stops between two statements."""


@pytest.mark.parametrize("second_write_fails", ["database", "label studio", "label studio mid-batch", "label studio bulk"])
def test_a_crash_between_the_two_writes_is_repaired_by_a_rerun(label_studio, ls, material, tmp_path, monkeypatch, second_write_fails):
    """A crash after the first batch (3 tasks): before the second batch reaches our database, after it
    did but before any of its 3 predictions reached Label Studio, or after 1 of the 3 did (each task
    posted on its own, several at once: what landed is whatever Label Studio holds), or, posting in
    bulk (a small project), before the second batch's one request."""
    env = new_project(label_studio, material, tmp_path, f"crash-{second_write_fails}")
    cli(env, "import", material["folder"] / "data" / "images")
    ws = Workspace(env["LABEL_STUDIO_URL"], env["LABEL_STUDIO_API_KEY"], int(env["LABEL_STUDIO_PROJECT"]), env["DATABASE_URL"])
    settings = prelabel_settings("layercam", None, "predicted", "fraction:0.2", 0.001, 64)
    calls, lock = Counter(), threading.Lock()

    def crash_from(name, write, first_failing_call):
        """``write`` until its ``first_failing_call``-th call, then a crash for that and every
        later call (as after a kill -9, nothing more is written)."""
        def wrapper(*args, **kwargs):
            with lock:
                calls[name] += 1
                dead = calls[name] >= first_failing_call
            if dead:
                raise Crash(name)
            return write(*args, **kwargs)
        return wrapper

    if second_write_fails == "database":
        monkeypatch.setattr(repository, "store_predictions", crash_from("database", repository.store_predictions, 2))
    elif second_write_fails == "label studio bulk":
        first_failing = 4  # the first batch's 3 predictions land in one request, the second's request fails
        monkeypatch.setattr(posting, "BULK_AT_LEAST", 3)  # a request per batch
        projects = ws.client.projects
        monkeypatch.setattr(projects, "import_predictions", crash_from("studio", projects.import_predictions, 2))
    else:
        monkeypatch.setattr(posting, "BULK_BELOW", 0)  # one post per task  # the first batch's 3 posts land; then none, or one more (whichever of the batch comes first)
        first_failing = 4 if second_write_fails == "label studio" else 5
        predictions = ws.client.predictions
        monkeypatch.setattr(predictions, "create", crash_from("studio", predictions.create, first_failing))
    with pytest.raises(Crash):
        prelabel_project(ws, material["model"], settings, batch_size=3, document_root=label_studio.document_root)
    monkeypatch.undo()
    if second_write_fails != "database":
        in_studio, in_database = prediction_tasks(ls, env)
        assert (len(in_studio), len(in_database)) == (first_failing - 1, 6)  # what the crash left
    fresh = Workspace(ws.label_studio_url, ws.api_key, ws.project_id, ws.database_url)
    report = prelabel_project(fresh, material["model"], settings, batch_size=3, document_root=label_studio.document_root)
    assert assert_agree(ls, env) == 12  # each task one prediction in Label Studio: none posted twice
    if second_write_fails != "database":  # stored but never posted: posted from the database, not recomputed
        assert report.reposted == 6 - (first_failing - 1)
        assert report.predicted == 6


def test_a_rerun_with_nothing_to_do_lists_no_task_and_no_prediction(label_studio, ls, material, tmp_path, monkeypatch):
    """With every task pre-labelled, a rerun asks Label Studio only for the tasks still pending
    (none come back) and the project's model versions: no prediction list, no task list."""
    env = new_project(label_studio, material, tmp_path, "nothing-to-do")
    cli(env, "import", material["folder"] / "data" / "images")
    cli(env, "prelabel", "--model", material["model"], "--batch-size", "5")
    assert assert_agree(ls, env) == 12
    seen = []  # (method, path, query, tasks in the answer)
    send = httpx.Client.send

    def recording_send(client, request, *args, **kwargs):
        response = send(client, request, *args, **kwargs)
        listed = None
        if request.method == "GET" and request.url.path.rstrip("/") == "/api/tasks" and response.status_code == 200:
            listed = len(json.loads(response.read())["tasks"])
        seen.append((request.method, request.url.path, dict(request.url.params), listed))
        return response

    monkeypatch.setattr(httpx.Client, "send", recording_send)
    output = cli(env, "prelabel", "--model", material["model"], "--batch-size", "5")
    monkeypatch.undo()
    assert "12 already had" in output, output
    assert seen, "the SDK's requests were not seen"
    assert not [s for s in seen if s[1].rstrip("/") == "/api/predictions" and s[0] == "GET"], seen
    task_lists = [s for s in seen if s[3] is not None]
    assert task_lists and all(s[3] == 0 and s[2].get("fields") == "task_only" for s in task_lists), seen
    assert not [s for s in seen if s[0] == "POST"], seen
    assert assert_agree(ls, env) == 12


def until(condition, seconds=120.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def run_and_kill(command, env, when):
    """Start ``command`` and kill -9 it as soon as ``when()`` holds (or when it has ended by itself)."""
    process = subprocess.Popen(command, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    until(lambda: process.poll() is not None or when())
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_kill_9_of_prelabel_import_and_sync_at_random_points_loses_nothing(label_studio, ls, material, tmp_path):
    """Kills at seeded random points of each command (after a random number of tasks written, or
    a random delay); one clean rerun; then Label Studio and our database agree."""
    env = new_project(label_studio, material, tmp_path, "kill-9")
    project = int(env["LABEL_STUDIO_PROJECT"])
    rng = random.Random(11)
    images = material["folder"] / "data" / "images"
    for _ in range(2):
        at = rng.randint(1, 11)
        run_and_kill([LABELER, "import", str(images)], env, lambda: len(list(ls.tasks.list(project=project))) >= at)
    cli(env, "import", images)
    tasks = list(ls.tasks.list(project=project, fields="all"))
    assert len(tasks) == 12 and len({t.data["content_hash"] for t in tasks}) == 12  # each image once
    for _ in range(3):
        at = rng.randint(1, 11)
        run_and_kill(
            [LABELER, "prelabel", "--model", str(material["model"]), "--batch-size", "1"], env,
            lambda: len(prediction_tasks(ls, env)[1]) >= at,
        )
        studio_tasks, database_tasks = prediction_tasks(ls, env)
        assert studio_tasks <= database_tasks  # database first: whatever Label Studio got, we have
    cli(env, "prelabel", "--model", material["model"], "--batch-size", "2")
    assert assert_agree(ls, env) == 12
    for task in tasks[:4]:
        ls.annotations.create(id=task.id, result=[choices_result(["covid"], "diagnosis", "image")], ground_truth=False)
    for _ in range(2):
        started, delay = time.monotonic(), rng.uniform(1.0, 6.0)
        run_and_kill([LABELER, "sync"], env, lambda: time.monotonic() - started > delay)
    cli(env, "sync")
    with session_factory(make_engine(env["DATABASE_URL"]))() as session:
        stored = session.scalars(select(AnnotationRevision.ls_annotation_id)).all()
    annotations = [a.id for t in tasks[:4] for a in ls.annotations.list(id=t.id)]
    assert sorted(stored) == sorted(annotations)


def test_label_studio_stopped_and_restarted_during_prelabel(material, tmp_path):
    """prelabel ends with one error line when Label Studio goes away; after a restart a rerun completes."""
    from label_studio_sdk import LabelStudio

    images = tmp_path / "many"
    write_dataset(images, per_class=20, size=64, seed=6)
    studio = LabelStudioServer(workdir=tmp_path / "studio", port=free_port()).start()
    try:
        env = new_project(studio, material, tmp_path, "restart")
        cli(env, "import", images / "images")
        client = LabelStudio(base_url=studio.url, api_key=studio.token)
        process = subprocess.Popen(
            [LABELER, "prelabel", "--model", str(material["model"]), "--batch-size", "1"],
            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        until(lambda: len(prediction_tasks(client, env)[0]) >= 2)
        studio.stop(cleanup=False)
        _, stderr = process.communicate(timeout=120)
        assert process.returncode != 0, "prelabel finished before Label Studio stopped: use more images"
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]  # TensorFlow's start-up notes aside
        assert errors == ["error: cannot reach Label Studio: ReadError"] or len(errors) == 1, stderr
        assert "Traceback" not in stderr, stderr
        studio.start()
        client = LabelStudio(base_url=studio.url, api_key=studio.token)
        cli(env, "prelabel", "--model", material["model"], "--batch-size", "4")
        assert assert_agree(client, env) == 40
    finally:
        studio.stop()
