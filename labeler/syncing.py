"""``labeler sync``: every annotation of a project, pulled through Label Studio's export API into
our database. It catches up what webhooks missed (e.g. while the backend was down) and is
idempotent: states already stored add nothing; annotations and tasks gone from Label Studio get a
"deleted" revision / mark."""
from __future__ import annotations

import json
from dataclasses import dataclass

from db import repository
from db.timestamps import parse_ls_time
from explain.labelstudio.configs import task_image_uri
from labeler.workspace import Workspace


@dataclass(frozen=True)
class SyncReport:
    tasks: int
    annotations: int
    added: int
    deleted_annotations: int
    deleted_tasks: int


def export_tasks(ws: Workspace, project_id: int) -> list[dict]:
    """All tasks of the project with their annotations (Label Studio's JSON export)."""
    chunks = ws.client.projects.exports.download_sync(id=project_id, export_type="JSON", download_all_tasks=True)
    return json.loads(b"".join(chunks))


def sync_project(ws: Workspace) -> SyncReport:
    project_id = ws.require_project()
    details = ws.client.projects.get(id=project_id)
    tasks = export_tasks(ws, project_id)
    added = 0
    seen_annotations: set[int] = set()
    with ws.sessions.begin() as session:
        project = repository.upsert_project(
            session, project_id, title=details.title, label_config=details.label_config, label_studio=ws.label_studio
        )
        for task in tasks:
            data = task.get("data") or {}
            live = repository.live_task(
                session, project, task["id"], task_image_uri(data, details.label_config), **repository.task_origin(data)
            )
            for annotation in task.get("annotations") or []:
                seen_annotations.add(annotation["id"])
                last = repository.last_revision(session, project, annotation["id"])
                if last is not None and last.action != "deleted" and _same_state(last, annotation):
                    continue
                action = "created" if last is None else "updated"
                added += repository.add_ls_annotation(session, live, annotation, action) is not None
        gone = [a.ls_annotation_id for a in repository.current_annotations(session, project) if a.ls_annotation_id not in seen_annotations]
        deleted_annotations = sum(repository.record_deletion(session, project, i) is not None for i in gone)
        exported = {t["id"] for t in tasks}
        stale = [t for t in repository.live_tasks(session, project) if t.ls_task_id not in exported]
        deleted_tasks = repository.delete_tasks(session, project, [t.ls_task_id for t in stale])
    return SyncReport(len(tasks), len(seen_annotations), added, deleted_annotations, deleted_tasks)


def _same_state(revision, annotation: dict) -> bool:
    return revision.result == annotation.get("result") and revision.ls_updated_at == parse_ls_time(annotation.get("updated_at"))
