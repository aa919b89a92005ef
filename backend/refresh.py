"""After a promotion: the project's open tasks get the new model's pre-labels in Label Studio, and
the new model version becomes the project's active one.

Label Studio's own "retrieve predictions" action (``POST /api/dm/actions?id=retrieve_tasks_predictions``)
is asked for the tasks without an annotation (listed page by page from Label Studio's task API),
a few at a time; it calls this backend's
/predict, which answers with the new version (stored in our database as usual). Then
``PATCH /api/projects/<id> {"model_version": ...}`` makes that version the active one: Label Studio
shows and sorts by the prediction scores of the active version only, and its "Uncertainty sampling"
serves the task with the lowest score of that version next (it accepts a version only once some
prediction carries it, hence this order).
"""
from __future__ import annotations

import requests

from explain.labelstudio.fetch import LabelStudioAuth

CHUNK = 16  # tasks per action: each is one synchronous /predict, well within Label Studio's 100 s
PAGE = 500


def open_tasks(http: requests.Session, url: str, auth: LabelStudioAuth, ls_project_id: int, timeout: float) -> list[int]:
    """Ids of the project's tasks that no one has annotated yet."""
    ids, page = [], 1
    while True:
        answer = http.get(
            f"{url}/api/tasks", params={"project": ls_project_id, "page": page, "page_size": PAGE, "fields": "task_only"},
            headers=auth.header(), timeout=timeout,
        )
        if answer.status_code == 404:  # past the last page
            return ids
        answer.raise_for_status()
        tasks = answer.json().get("tasks") or []
        ids += [t["id"] for t in tasks if not t.get("total_annotations")]
        if len(tasks) < PAGE:
            return ids
        page += 1


def refresh_predictions(url: str, auth: LabelStudioAuth, ls_project_id: int, version: str, timeout: float = 120.0) -> int:
    """Ask Label Studio to pre-label the project's open tasks again, then activate ``version``;
    returns how many tasks were asked for (0: nothing to do, nothing changed). Raises
    requests.HTTPError / RequestException when Label Studio refuses."""
    with requests.Session() as http:
        task_ids = open_tasks(http, url, auth, ls_project_id, timeout)
        if not task_ids:
            return 0
        for start in range(0, len(task_ids), CHUNK):
            answer = http.post(
                f"{url}/api/dm/actions", params={"id": "retrieve_tasks_predictions", "project": ls_project_id},
                json={"selectedItems": {"all": False, "included": task_ids[start:start + CHUNK]}},
                headers=auth.header(), timeout=timeout,
            )
            answer.raise_for_status()
        answer = http.patch(
            f"{url}/api/projects/{ls_project_id}", json={"model_version": version}, headers=auth.header(), timeout=timeout
        )
        answer.raise_for_status()
    return len(task_ids)
