"""`labeler.patients.backfill_patient_keys` against a real Label Studio: the patient keys of
tasks whose rows in our database have none are read from exactly those tasks' data (a Data
Manager ``selectedItems`` query, a few ids per request) and stored."""
from __future__ import annotations

from sqlalchemy import select

from db.repository import live_task, upsert_project
from db.schema import Task
from labeler import patients
from labeler.workspace import Workspace

CONFIG = '<View><Image name="image" value="$image"/><BrushLabels name="m" toName="image"><Label value="a"/></BrushLabels></View>'


def test_backfill_reads_only_the_asked_tasks_and_stores_their_keys(label_studio, ls, tmp_path, monkeypatch):
    project = ls.projects.create(title="backfill", label_config=CONFIG).id
    data = [{"patient": "k1:aa"}, {"patient_id": "P-7"}, {"patient": "k1:cc"}, {}, {"patient": "k1:ee"}]
    ls.projects.import_tasks(id=project, request=[{"data": {"image": f"/data/local-files/?d=b/{i}.png", **d}}
                                                  for i, d in enumerate(data)])
    ids = sorted(t.id for t in ls.tasks.list(project=project))
    ws = Workspace(label_studio.url, label_studio.token, project, f"sqlite:///{tmp_path / 'labeler.db'}")
    with ws.sessions.begin() as session:
        row = upsert_project(session, project, title="backfill", label_config=CONFIG)
        for task_id in ids:
            live_task(session, row, task_id, "")
    calls = []
    listing = ws.client.tasks.list
    monkeypatch.setattr(ws.client.tasks, "list", lambda **kw: calls.append(kw) or listing(**kw))
    monkeypatch.setattr(patients, "BACKFILL_IDS", 2)
    asked = [ids[0], ids[1], ids[3], ids[4]]  # ids[2] has a key in Label Studio but is not asked for
    keys = patients.backfill_patient_keys(ws, asked)
    assert keys == {ids[0]: "k1:aa", ids[1]: "P-7", ids[4]: "k1:ee"}
    assert len(calls) == 2 and all(kw["fields"] == "task_only" for kw in calls)  # 4 ids, 2 per request
    with ws.sessions() as session:
        stored = dict(session.execute(select(Task.ls_task_id, Task.patient_key)).all())
    assert stored == {ids[0]: "k1:aa", ids[1]: "P-7", ids[2]: None, ids[3]: None, ids[4]: "k1:ee"}
