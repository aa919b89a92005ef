"""`labeler sync` against a real Label Studio: after a first (full) sync, the next one reads only
the tasks changed since its mark, yet records created, updated and deleted annotations and
deleted tasks; with nothing new it fetches no task; a deletion that moved no ``updated_at`` is
found by the count check; ``--full`` ignores the mark; the mark lives in our database."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import httpx
from label_studio_sdk import LabelStudio
from sqlalchemy import select

from db import repository
from db.schema import AnnotationRevision
from db.timestamps import parse_ls_time
from labeler.syncing import sync_project
from labeler.workspace import Workspace

CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<Choices name="finding" toName="image"><Choice value="a"/><Choice value="b"/></Choices></View>'
)
NOW = timedelta(0)  # no overlap: the tests wait a second instead, so that a mark equals the newest change


def result(choice: str) -> list[dict]:
    return [{"from_name": "finding", "to_name": "image", "type": "choices", "value": {"choices": [choice]}}]


def new_project(ls, title: str, n: int) -> tuple[int, list[int]]:
    project = ls.projects.create(title=title, label_config=CONFIG).id
    ls.projects.import_tasks(id=project, request=[{"data": {"image": f"/data/local-files/?d=s/{i}.png"}} for i in range(n)])
    return project, sorted(t.id for t in ls.tasks.list(project=project, fields="task_only"))


class Recorded:
    """A Workspace whose SDK client records every request (method, path) and the number of
    tasks each task listing returned."""

    def __init__(self, label_studio, project: int, database: str):
        self.requests: list[tuple[str, str]] = []
        self.listed: list[int] = []

        def answered(response: httpx.Response):
            self.requests.append((response.request.method, response.request.url.path))
            if response.request.url.path == "/api/tasks/":
                response.read()
                self.listed.append(len(response.json()["tasks"]))

        self.ws = Workspace(label_studio.url, label_studio.token, project, database)
        client = httpx.Client(event_hooks={"response": [answered]}, timeout=60)
        self.ws.__dict__["client"] = LabelStudio(base_url=label_studio.url, api_key=label_studio.token, httpx_client=client)

    def sync(self, **options):
        self.requests.clear()
        self.listed.clear()
        return sync_project(self.ws, overlap=NOW, **options)


def history(ws: Workspace) -> dict[int, list[str]]:
    """Label Studio annotation id -> the actions of its stored revisions, oldest first."""
    with ws.sessions() as session:
        rows = session.execute(select(AnnotationRevision.ls_annotation_id, AnnotationRevision.action).order_by(AnnotationRevision.id))
        out: dict[int, list[str]] = {}
        for annotation, action in rows:
            out.setdefault(annotation, []).append(action)
        return out


def live_ids(ws: Workspace, project: int) -> set[int]:
    with ws.sessions() as session:
        return repository.live_task_ids(session, repository.get_project(session, project))


def test_incremental_sync_records_changes_deletions_and_fetches_nothing_when_idle(label_studio, ls, tmp_path):
    project, ids = new_project(ls, "incremental", 6)
    a0 = ls.annotations.create(id=ids[0], result=result("a")).id
    a1 = ls.annotations.create(id=ids[1], result=result("a")).id
    a2 = ls.annotations.create(id=ids[2], result=result("a")).id
    client = Recorded(label_studio, project, f"sqlite:///{tmp_path}/db.sqlite")
    time.sleep(1.1)  # the first sync's server time (to the second) passes the tasks' creation too
    first = client.sync()
    assert (first.full, first.tasks, first.added) == (True, 6, 3)
    assert any("export" in p for _, p in client.requests)

    time.sleep(1.1)
    a3 = ls.annotations.create(id=ids[3], result=result("b")).id  # created
    ls.annotations.update(id=a0, result=result("b"))  # updated
    ls.annotations.delete(id=a1)  # deleted
    ls.tasks.delete(id=ids[2])  # a deleted task (with its annotation a2)
    time.sleep(1.1)  # the sync's server time (to the second) passes the changes
    second = client.sync()
    assert not second.full and not any("export" in p for _, p in client.requests)
    assert second.tasks == 3 and second.added == 2  # tasks 0, 1, 3 changed: a3 new, a0 updated
    assert (second.deleted_annotations, second.deleted_tasks) == (2, 1)  # a1 (task 1 changed), a2 (task 2 gone)
    assert second.listed == 5  # the task count differed: ids listed once
    assert history(client.ws) == {
        a0: ["created", "updated"], a1: ["created", "deleted"], a2: ["created", "deleted"], a3: ["created"]
    }
    assert live_ids(client.ws, project) == set(ids) - {ids[2]}

    idle = client.sync()
    assert (idle.tasks, idle.added, idle.deleted_annotations, idle.deleted_tasks, idle.listed) == (0, 0, 0, 0, 0)
    assert client.listed == [0]  # one task listing, answered with no task
    assert [p for _, p in client.requests] == [f"/api/projects/{project}/", "/api/tasks/", f"/api/projects/{project}/"]


def test_a_deletion_that_moved_no_updated_at_is_found_by_the_counts(label_studio, ls, tmp_path):
    project, ids = new_project(ls, "counts", 4)
    kept = ls.annotations.create(id=ids[0], result=result("a")).id
    doomed = ls.annotations.create(id=ids[1], result=result("a")).id
    client = Recorded(label_studio, project, f"sqlite:///{tmp_path}/db.sqlite")
    assert client.sync().added == 2
    ls.annotations.delete(id=doomed)
    time.sleep(1.1)
    # Move the mark past the deletion's updated_at, as if the deletion had not touched its task
    # (e.g. a path without Annotation.delete): the date filter cannot see it any more.
    with client.ws.sessions.begin() as session:
        p = repository.get_project(session, project)
        newest = max(parse_ls_time(t.updated_at) for t in ls.tasks.list(project=project, fields="task_only"))
        repository.save_sync_mark(session, p, newest)
    report = client.sync()
    assert client.listed[0] == 0  # nothing changed after the mark
    assert (report.listed, report.tasks, report.deleted_annotations, report.deleted_tasks) == (4, 1, 1, 0)
    assert history(client.ws) == {kept: ["created"], doomed: ["created", "deleted"]}
    assert client.sync().listed == 0  # the counts agree again


def test_full_ignores_the_mark(label_studio, ls, tmp_path):
    project, ids = new_project(ls, "full", 3)
    first = ls.annotations.create(id=ids[0], result=result("a")).id
    client = Recorded(label_studio, project, f"sqlite:///{tmp_path}/db.sqlite")
    client.sync()
    ls.annotations.update(id=first, result=result("b"))
    with client.ws.sessions.begin() as session:  # a mark from the future hides the update from an incremental sync
        p = repository.get_project(session, project)
        repository.save_sync_mark(session, p, max(parse_ls_time(t.updated_at) for t in ls.tasks.list(project=project)) + timedelta(hours=1))
    assert client.sync().added == 0
    full = client.sync(full=True)
    assert (full.full, full.tasks, full.added) == (True, 3, 1)
    assert history(client.ws) == {first: ["created", "updated"]}
    assert client.sync(full=True).added == 0  # idempotent


def test_the_mark_survives_across_processes(label_studio, ls, tmp_path):
    project, ids = new_project(ls, "cli", 3)
    ls.annotations.create(id=ids[0], result=result("a"))
    database = f"sqlite:///{tmp_path}/db.sqlite"
    env = {**os.environ, "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token,
           "LABEL_STUDIO_PROJECT": str(project), "DATABASE_URL": database, "PYTHONPATH": str(Path(__file__).parents[1])}

    def sync(*args):
        done = subprocess.run([str(Path(sys.executable).parent / "labeler"), "sync", *args], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "full sync: 3 task(s), 1 annotation(s): 1 new revision(s)" in sync()
    with Workspace(database_url=database).sessions() as session:
        mark = repository.sync_mark(session, repository.get_project(session, project))
    assert mark is not None
    ls.annotations.create(id=ids[1], result=result("b"))
    second = sync()
    assert "fetched " in second and "changed task(s)" in second and "1 new revision(s)" in second, second
    assert "full sync: 3 task(s)" in sync("--full")
