"""/webhook: Label Studio events -> immutable annotation revisions and task / project updates.

Every event is idempotent: a duplicate delivery (Label Studio retries, or the same webhook
registered twice) adds nothing. A malformed payload is refused whole (BadRequest, nothing stored).
"""
from __future__ import annotations

from explain.labelstudio.configs import image_data_key, task_image_uri
from backend.predict import BadRequest, parse_id, parse_project_id
from db import repository

ANNOTATION_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED")
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
    project_id = webhook_project_id(body)
    fields = _project_fields(body.get("project")) if action == "PROJECT_UPDATED" else {}
    project = repository.upsert_project(session, project_id, label_studio=label_studio, **fields)
    if action in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED"):
        kind = "created" if action == "ANNOTATION_CREATED" else "updated"
        stored = _revision(session, project, body.get("annotation"), body.get("task"), kind)
        return {"status": "ok", "stored": int(stored)}
    if action == "ANNOTATIONS_CREATED":
        annotations = _list(body, "annotations")
        given = body.get("tasks") if isinstance(body.get("tasks"), list) else []
        tasks = {t["id"]: t for t in given if isinstance(t, dict) and _is_int(t.get("id"))}
        stored = sum(
            _revision(session, project, a, tasks.get(a["task"]) if _is_int(a.get("task")) else None, "created")
            for a in annotations
        )
        return {"status": "ok", "stored": stored}
    if action == "ANNOTATIONS_DELETED":
        ids = [_id(a, "annotations") for a in _list(body, "annotations")]
        stored = sum(repository.record_deletion(session, project, i) is not None for i in ids)
        return {"status": "ok", "stored": stored}
    if action == "TASKS_DELETED":
        ids = [_id(t, "tasks") for t in _list(body, "tasks")]
        return {"status": "ok", "deleted": repository.delete_tasks(session, project, ids)}
    return {"status": "ok"}


def webhook_project_id(body) -> int:
    """The Label Studio project id of a webhook payload (BadRequest when it has none)."""
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
    fields = {"title": project.get("title"), "label_config": project.get("label_config")}
    for name, value in fields.items():
        if value is not None and not isinstance(value, str):
            raise BadRequest(f"the project's '{name}' must be a string")
    if fields["title"] is not None:
        fields["title"] = fields["title"][:255]  # the column's size; Label Studio allows 50
    return fields


def _list(body, key) -> list[dict]:
    items = body.get(key)
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise BadRequest(f"'{key}' must be a list of objects")
    return items


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _id(item: dict, key: str) -> int:
    if not _is_int(item.get("id")):
        raise BadRequest(f"every entry of '{key}' needs an integer 'id'")
    return parse_id(item["id"], f"'{key}' id")


def _revision(session, project, annotation, task, action) -> bool:
    if not isinstance(annotation, dict) or not _is_int(annotation.get("id")):
        raise BadRequest("'annotation' must be an object with an integer 'id'")
    annotation_id = parse_id(annotation["id"], "the annotation's 'id'")
    task_id = annotation.get("task") if not isinstance(task, dict) else task.get("id", annotation.get("task"))
    task_id = parse_id(task_id, "the annotation's task id")
    last = repository.last_revision(session, project, annotation_id)
    if last is not None and not last.task.is_live:
        # A late event of an annotation whose task was deleted: Label Studio may have given the
        # task id to a new task since, which this event must neither touch nor replace.
        row = last.task
    else:
        row = _task(session, project, task_id, task)
    try:
        return repository.add_ls_annotation(session, row, annotation, action) is not None
    except ValueError as exc:
        raise BadRequest(f"annotation {annotation_id}: {exc}") from None


def _task(session, project, task_id: int, task):
    """The live task, created from the payload's task data when we have not seen it yet.

    A live task is replaced (Label Studio reused its id for another task) only when the payload
    names another image under the project's image key; a payload without that key, or a project
    whose labelling config is not known, leaves the live task as it is.
    """
    data = task.get("data") if isinstance(task, dict) else None
    data = data if isinstance(data, dict) else {}
    uri = _image_uri(data, project.label_config)
    if uri is None:
        live = repository.get_live_task(session, project, task_id)
        if live is not None:
            return live
        uri = task_image_uri(data, None)  # a new row records the best guess (its first string value)
    return repository.live_task(session, project, task_id, uri, **repository.task_origin(data))


def _image_uri(data: dict, config: str | None) -> str | None:
    """The image URI under the config's image key; None when the config, the key or a string value is missing."""
    try:
        key = image_data_key(config) if config else None
    except ValueError:
        return None
    value = data.get(key) if key else None
    return value if isinstance(value, str) and value else None
