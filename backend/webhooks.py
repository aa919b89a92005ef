"""/webhook: Label Studio events -> immutable annotation revisions and task / project updates.

Every event is idempotent: a duplicate delivery (Label Studio retries, or the same webhook
registered twice) adds nothing.
"""
from __future__ import annotations

from explain.labeling import task_image_uri
from backend.predict import BadRequest, parse_project_id
from db import repository

HANDLED = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED", "ANNOTATIONS_DELETED",
           "TASKS_DELETED", "PROJECT_UPDATED")


def handle_event(session, body: dict, label_studio: str = "") -> dict:
    """Apply one webhook payload from Label Studio ``label_studio`` (a `db.identity` string, ""
    when unknown); returns a small JSON-able summary of what was stored."""
    action = body.get("action")
    if not isinstance(action, str):
        raise BadRequest("webhook body needs an 'action'")
    if action not in HANDLED:
        return {"status": "ignored", "action": action}
    project_id = _project_id(body)
    fields = _project_fields(body.get("project")) if action == "PROJECT_UPDATED" else {}
    project = repository.upsert_project(session, project_id, label_studio=label_studio, **fields)
    if action in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED"):
        kind = "created" if action == "ANNOTATION_CREATED" else "updated"
        stored = _revision(session, project, body.get("annotation"), body.get("task"), kind)
        return {"status": "ok", "stored": int(stored)}
    if action == "ANNOTATIONS_CREATED":
        annotations = _list(body, "annotations")
        tasks = {t.get("id"): t for t in body.get("tasks") or [] if isinstance(t, dict)}
        stored = sum(_revision(session, project, a, tasks.get(a.get("task")), "created") for a in annotations)
        return {"status": "ok", "stored": stored}
    if action == "ANNOTATIONS_DELETED":
        ids = [_id(a, "annotations") for a in _list(body, "annotations")]
        stored = sum(repository.record_deletion(session, project, i) is not None for i in ids)
        return {"status": "ok", "stored": stored}
    if action == "TASKS_DELETED":
        ids = [_id(t, "tasks") for t in _list(body, "tasks")]
        return {"status": "ok", "deleted": repository.delete_tasks(session, project, ids)}
    return {"status": "ok"}


def _project_id(body) -> int:
    project = body.get("project")
    value = project.get("id") if isinstance(project, dict) else project
    if value is None:
        annotation = body.get("annotation")
        value = annotation.get("project") if isinstance(annotation, dict) else None
    project_id = parse_project_id(value)
    if project_id is None:
        raise BadRequest("webhook body needs a project id")
    return project_id


def _project_fields(project) -> dict:
    if not isinstance(project, dict):
        return {}
    return {"title": project.get("title"), "label_config": project.get("label_config")}


def _list(body, key) -> list[dict]:
    items = body.get(key)
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise BadRequest(f"'{key}' must be a list of objects")
    return items


def _id(item: dict, key: str) -> int:
    if not isinstance(item.get("id"), int):
        raise BadRequest(f"every entry of '{key}' needs an integer 'id'")
    return item["id"]


def _revision(session, project, annotation, task, action) -> bool:
    if not isinstance(annotation, dict) or not isinstance(annotation.get("id"), int):
        raise BadRequest("'annotation' must be an object with an integer 'id'")
    task_id = annotation.get("task") if not isinstance(task, dict) else task.get("id", annotation.get("task"))
    if not isinstance(task_id, int):
        raise BadRequest("the annotation's task id is missing")
    live = _task(session, project, task_id, task)
    return repository.add_ls_annotation(session, live, annotation, action) is not None


def _task(session, project, task_id: int, task):
    """The live task, created from the payload's task data when we have not seen it yet."""
    data = task.get("data") if isinstance(task, dict) else None
    if not isinstance(data, dict):
        return repository.get_live_task(session, project, task_id) or repository.live_task(session, project, task_id, "")
    return repository.live_task(session, project, task_id, task_image_uri(data, project.label_config))
