"""After a promotion: the project's open tasks get the new model's pre-labels in Label Studio, and
the new model version becomes the project's active one.

Label Studio's own "retrieve predictions" action (``POST /api/dm/actions?id=retrieve_tasks_predictions``)
is asked for the tasks without a corrected annotation, a few at a time; it calls this backend's
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


def refresh_predictions(
    url: str, auth: LabelStudioAuth, ls_project_id: int, task_ids: list[int], version: str, timeout: float = 120.0,
) -> int:
    """Ask Label Studio to pre-label ``task_ids`` again, then activate ``version``; returns how many
    tasks were asked for. Raises requests.HTTPError / RequestException when Label Studio refuses."""
    with requests.Session() as http:
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
