"""Which tasks of a project still lack a prediction of one model version, asked of Label Studio's
Data Manager so that the answer costs in proportion to those tasks, not to the project.

Label Studio 1.23's task list filter ``predictions_model_versions`` ``not_contains`` keeps the tasks
with no prediction whose version CONTAINS the given text (a substring match, measured): a task
holding only ``<v>-fp16`` is dropped for ``<v>`` although it lacks ``<v>``. So when the project
has such a longer version (its model-versions list says so, one small request), the tasks that
``contains`` keeps are checked one by one on their exact versions as well.
"""
from __future__ import annotations

import json

import requests

PAGE_SIZE = 1000
#: Label Studio cuts the Data Manager's ``predictions_model_versions`` text at this many characters.
_SHOWN_CHARS = 500


def pending_tasks(ws, project_id: int, version: str) -> list:
    """The tasks (SDK task objects: ``.id``, ``.data``) of ``project_id`` without a prediction of
    exactly ``version`` in Label Studio, in id order."""
    pending = _listed(ws, project_id, "not_contains", version)
    if any(version in other and other != version for other in _model_versions(ws, project_id)):
        pending += [t for t in _listed(ws, project_id, "contains", version) if not _has_version(ws, t, version)]
    return sorted(pending, key=lambda t: t.id)


def _listed(ws, project_id: int, operator: str, version: str) -> list:
    """Tasks kept by the ``predictions_model_versions`` filter ``operator`` (cheap fields only)."""
    item = {"filter": "filter:tasks:predictions_model_versions", "operator": operator, "type": "List", "value": [version]}
    query = json.dumps({"filters": {"conjunction": "and", "items": [item]}})
    return list(ws.client.tasks.list(project=project_id, fields="task_only", query=query, page_size=PAGE_SIZE))


def _model_versions(ws, project_id: int) -> list[str]:
    """The model versions of the project's predictions (``GET /api/projects/N/model-versions/``,
    one grouped query; the SDK 2.x client has no method for it)."""
    url = f"{ws.label_studio_url.rstrip('/')}/api/projects/{project_id}/model-versions/"
    response = requests.get(url, headers=ws.auth.header(), timeout=60)
    response.raise_for_status()
    return list(response.json())


def _has_version(ws, task, version: str) -> bool:
    """Whether ``task`` (listed with the annotated ``predictions_model_versions`` text, "a,b" on
    SQLite, "a, b" on PostgreSQL) has a prediction of exactly ``version``; its predictions are
    asked for when that text cannot tell (cut short, or a version with a comma)."""
    shown = getattr(task, "predictions_model_versions", None) or ""
    if isinstance(shown, str) and "," not in version and len(shown) < _SHOWN_CHARS:
        return version in {part.strip() for part in shown.split(",")}
    return any(p.model_version == version for p in ws.client.predictions.list(task=task.id))
