"""``labeler prelabel`` against a real Label Studio: the posting switches from bulk requests to one
post per task at the project size `labeler.posting.BULK_BELOW`, and two ``labeler prelabel``
processes on one project and one real PostgreSQL database (tests/postgres.py) share the work:
every task ends with exactly one prediction of the version, in Label Studio and in our database,
and each worker did some."""
from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path

import keras
import pytest
import sqlalchemy as sa

from db import claims, repository
from db.engine import make_engine, session_factory
from db.migrating import migrate
from db.timestamps import utcnow
from db.schema import PrelabelClaim, Prediction, Project, Task
from labeler import posting
from labeler.cli import prelabel_settings
from labeler.prelabeling import _Claims, prelabel_project
from labeler.synthetic import write_dataset
from labeler.workspace import Workspace
from models.classifiers import build_small_cnn
from models.loading import save_classifier
from test_faults import cli

LABELER = str(Path(sys.executable).parent / "labeler")
CLASSES = ("covid", "normal", "pneumonia")
RESULT = [{"from_name": "diagnosis", "to_name": "image", "type": "choices", "value": {"choices": ["covid"]}}]


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    folder = tmp_path_factory.mktemp("workers")
    keras.utils.set_random_seed(3)
    model, spec = build_small_cnn(CLASSES, input_size=(32, 32), filters=(4, 8))
    write_dataset(folder / "few", per_class=6, size=64, seed=5)  # 12 images
    write_dataset(folder / "many", per_class=40, size=64, seed=6)  # 80 images
    return {"model": save_classifier(model, spec, folder / "cnn.keras"), "few": folder / "few" / "images",
            "many": folder / "many" / "images"}


def new_project(studio, database_url, title, material, images):
    env = {
        "LABEL_STUDIO_URL": studio.url, "LABEL_STUDIO_API_KEY": studio.token, "DATABASE_URL": database_url,
        "LOCAL_FILES_DOCUMENT_ROOT": str(studio.document_root),
    }
    migrate(database_url)
    output = cli(env, "init", "--model", material["model"], "--title", title)
    env["LABEL_STUDIO_PROJECT"] = output.split("LABEL_STUDIO_PROJECT=")[1].split()[0]
    cli(env, "import", images)
    return env


def counting(monkeypatch, owner, name, calls: Counter):
    method = getattr(owner, name)

    def wrapper(*args, **kwargs):
        calls[name] += len(kwargs["request"]) if name == "import_predictions" else 1
        calls[name + " requests"] += 1
        return method(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)


@pytest.mark.parametrize("held, fast_import, expected", [(0, False, (1, 6, 6)), (6, False, (0, 0, 12)), (6, True, (2, 12, 0))])
def test_posts_go_in_bulk_until_the_project_holds_the_threshold(
    label_studio, ls, material, tmp_path, monkeypatch, held, fast_import, expected
):
    """BULK_BELOW 5, BULK_AT_LEAST 6, batches of 3; expected (bulk requests, predictions in them,
    single posts): an empty project gets its first two batches gathered into one request (0
    predictions held before it), then one post per task; a project already holding 6 predictions
    of another version gets one post per task from the start, or, with Label Studio's
    constant-cost import (FAST_IMPORT_FLAG: labeler.studio starts it so) and ``fast_import``, bulk
    requests only."""
    env = new_project(label_studio, f"sqlite:///{tmp_path / 'labeler.db'}", f"hybrid-{held}-{fast_import}", material, material["few"])
    project = int(env["LABEL_STUDIO_PROJECT"])
    for task in list(ls.tasks.list(project=project, fields="task_only"))[:held]:
        ls.predictions.create(task=task.id, result=RESULT, score=0.5, model_version="someone-else")
    ws = Workspace(env["LABEL_STUDIO_URL"], env["LABEL_STUDIO_API_KEY"], project, env["DATABASE_URL"])
    calls: Counter = Counter()
    counting(monkeypatch, ws.client.projects, "import_predictions", calls)
    counting(monkeypatch, ws.client.predictions, "create", calls)
    monkeypatch.setattr(posting, "BULK_BELOW", 5)
    monkeypatch.setattr(posting, "BULK_AT_LEAST", 6)
    settings = prelabel_settings("layercam", None, "predicted", "fraction:0.2", 0.001, 64)
    report = prelabel_project(ws, material["model"], settings, batch_size=3, document_root=label_studio.document_root,
                              fast_import=fast_import)
    assert report.predicted == 12 and not report.failed
    assert (calls["import_predictions requests"], calls["import_predictions"], calls["create"]) == expected
    mine = Counter(p.task for p in ls.predictions.list(project=project) if p.model_version == report.version)
    assert len(mine) == 12 and set(mine.values()) == {1}


@pytest.mark.parametrize("wait_s, requests", [(0.0, 4), (3600.0, 1)])
def test_gathered_predictions_go_once_the_oldest_has_waited_long_enough(
    label_studio, ls, material, tmp_path, monkeypatch, wait_s, requests
):
    """Batches of 3 and a gathering target no project reaches: with no wait allowed each batch
    goes in its own bulk request (4), with an hour allowed all 12 go in the final one."""
    env = new_project(label_studio, f"sqlite:///{tmp_path / 'labeler.db'}", f"gather-{wait_s}", material, material["few"])
    ws = Workspace(env["LABEL_STUDIO_URL"], env["LABEL_STUDIO_API_KEY"], int(env["LABEL_STUDIO_PROJECT"]), env["DATABASE_URL"])
    calls: Counter = Counter()
    counting(monkeypatch, ws.client.projects, "import_predictions", calls)
    monkeypatch.setattr(posting, "BULK_AT_LEAST", 1000)
    monkeypatch.setattr(posting, "GATHER_AT_MOST_S", wait_s)
    settings = prelabel_settings("layercam", None, "predicted", "fraction:0.2", 0.001, 64)
    report = prelabel_project(ws, material["model"], settings, batch_size=3, document_root=label_studio.document_root)
    assert report.predicted == 12 and not report.failed
    assert (calls["import_predictions requests"], calls["import_predictions"]) == (requests, 12)


def test_the_model_works_on_two_batches_at_once_and_every_task_is_stored_once(
    label_studio, ls, material, tmp_path, monkeypatch
):
    """MODEL_CALLS_IN_FLIGHT = 2: a slowed model call overlaps the next one (never a third),
    and the regions, the database and Label Studio still get each task once, in batch order."""
    import threading
    import time

    from explain.service import PrelabelService

    env = new_project(label_studio, f"sqlite:///{tmp_path / 'labeler.db'}", "in-flight", material, material["few"])
    ws = Workspace(env["LABEL_STUDIO_URL"], env["LABEL_STUDIO_API_KEY"], int(env["LABEL_STUDIO_PROJECT"]), env["DATABASE_URL"])
    lock, running, most, described = threading.Lock(), [0], [0], []
    infer, describe = PrelabelService.infer, PrelabelService.describe

    def slow_infer(self, outcomes, inputs=None):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.3)
        try:
            return infer(self, outcomes, inputs)
        finally:
            with lock:
                running[0] -= 1

    def noted_describe(self, outcomes, outputs):
        described.append([o.task_id for o in outcomes])
        return describe(self, outcomes, outputs)

    monkeypatch.setattr(PrelabelService, "infer", slow_infer)
    monkeypatch.setattr(PrelabelService, "describe", noted_describe)
    settings = prelabel_settings("layercam", None, "predicted", "fraction:0.2", 0.001, 64)
    report = prelabel_project(ws, material["model"], settings, batch_size=3, document_root=label_studio.document_root)
    assert report.predicted == 12 and not report.failed
    assert most[0] == 2
    flat = [task for batch in described for task in batch]
    assert flat == sorted(flat) and len(set(flat)) == 12  # claimed in id order, described in that order
    mine = Counter(p.task for p in ls.predictions.list(project=ws.project_id) if p.model_version == report.version)
    assert len(mine) == 12 and set(mine.values()) == {1}
    with session_factory(make_engine(env["DATABASE_URL"]))() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Prediction)) == 12


def test_two_prelabel_processes_share_a_project_and_do_no_task_twice(label_studio, ls, material, postgres_database):
    env = new_project(label_studio, postgres_database, "two-workers", material, material["many"])
    project = int(env["LABEL_STUDIO_PROJECT"])
    command = [LABELER, "prelabel", "--model", str(material["model"]), "--batch-size", "2"]
    workers = [
        subprocess.Popen(command, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), outputs
    assert not any("Traceback" in o for o in outputs), outputs

    tasks = {t.id for t in ls.tasks.list(project=project, fields="task_only")}
    assert len(tasks) == 80
    in_studio = list(ls.predictions.list(project=project))
    versions = {p.model_version for p in in_studio}
    assert len(versions) == 1, versions
    (version,) = versions
    per_task = Counter(p.task for p in in_studio)
    assert set(per_task) == tasks and set(per_task.values()) == {1}, per_task  # each task once in Label Studio

    sessions = session_factory(make_engine(postgres_database))
    with sessions() as session:
        stored = Counter(session.scalars(
            sa.select(Task.ls_task_id).join(Prediction, Prediction.task_id == Task.id).join(Project)
            .where(Project.ls_project_id == project)
        ))
        claimed = session.execute(sa.select(PrelabelClaim.ls_task_id, PrelabelClaim.worker, PrelabelClaim.done_at)
                                  .where(PrelabelClaim.model_version == version)).all()
    assert set(stored) == tasks and set(stored.values()) == {1}, stored  # each task once in our database
    assert sorted(c.ls_task_id for c in claimed) == sorted(tasks) and all(c.done_at for c in claimed)
    by_pid = Counter(c.worker.split(":")[1] for c in claimed)
    assert set(by_pid) == {str(w.pid) for w in workers}, by_pid  # both workers did some
    done = [int(o.split("pre-labelled ")[1].split()[0]) for o in outputs]
    assert sum(done) == 80 and sorted(done) == sorted(by_pid.values()), outputs


def test_a_task_taken_over_from_a_stopped_worker_is_checked_in_label_studio_first(label_studio, ls, material, tmp_path):
    """Worker X claimed tasks A and B, posted A's prediction and stopped (another host: only its
    lease frees them). A worker whose pending list predates that post takes both over once the
    lease has passed, finds A's prediction in Label Studio and marks it done, and works on B only."""
    env = new_project(label_studio, f"sqlite:///{tmp_path / 'labeler.db'}", "take-over", material, material["few"])
    project = int(env["LABEL_STUDIO_PROJECT"])
    ws = Workspace(env["LABEL_STUDIO_URL"], env["LABEL_STUDIO_API_KEY"], project, env["DATABASE_URL"])
    version = "cnn-take-over"
    a, b, c = list(ls.tasks.list(project=project, fields="task_only"))[:3]
    stale_list = [a, b, c]  # listed while A was still pending
    with ws.sessions.begin() as session:
        ours = repository.upsert_project(session, project, label_studio=ws.label_studio)
        dead = claims.claim_tasks(session, ours, version, [a.id, b.id], "elsewhere:1:x")
        assert dead.ids == sorted([a.id, b.id])
        session.execute(sa.update(PrelabelClaim).values(claimed_at=utcnow() - timedelta(seconds=601)))
    ls.predictions.create(task=a.id, result=RESULT, score=0.5, model_version=version)  # X's post landed

    me = _Claims(ws, project, version, "here:2:y", 600.0, stale_list, batch_size=3, listed_after=utcnow() - timedelta(seconds=60))
    assert [t.id for t in me.next_batch()] == sorted([b.id, c.id])
    with ws.sessions() as session:
        rows = {r.ls_task_id: r for r in session.scalars(sa.select(PrelabelClaim))}
    assert rows[a.id].done_at is not None and rows[a.id].worker == "here:2:y"  # found posted: done, not redone
    assert rows[b.id].done_at is None and rows[c.id].done_at is None


def test_a_prediction_deleted_in_label_studio_is_posted_again_by_the_next_run(label_studio, ls, material, tmp_path):
    """Done claims do not hide a task whose prediction a user deleted: the next run posts that
    task's stored answer again (same version, same image), once, and nothing else."""
    env = new_project(label_studio, f"sqlite:///{tmp_path / 'labeler.db'}", "deleted-prediction", material, material["few"])
    project = int(env["LABEL_STUDIO_PROJECT"])
    ws = Workspace(env["LABEL_STUDIO_URL"], env["LABEL_STUDIO_API_KEY"], project, env["DATABASE_URL"])
    settings = prelabel_settings("layercam", None, "predicted", "fraction:0.2", 0.001, 64)
    run = lambda: prelabel_project(ws, material["model"], settings, batch_size=4, document_root=label_studio.document_root)  # noqa: E731
    assert run().predicted == 12
    victim = list(ls.predictions.list(project=project))[5]
    ls.predictions.delete(id=victim.id)
    again = run()
    assert (again.predicted, again.reposted, again.elsewhere) == (0, 1, 0), again
    per_task = Counter(p.task for p in ls.predictions.list(project=project) if p.model_version == again.version)
    assert len(per_task) == 12 and set(per_task.values()) == {1}
    assert run().predicted == 0
