"""The project's corrected masks as stored in our database: every live task with at least one
current (last revision not deleted), not cancelled annotation. Read by ``labeler export`` and by
the backend's training jobs, so that both train on the same data."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

_REGION_TAGS = {"BrushLabels", "PolygonLabels", "RectangleLabels"}


def config_labels(label_config: str | None) -> set[str]:
    """Label values of the BrushLabels / PolygonLabels / RectangleLabels tags of a labelling config."""
    if not label_config:
        return set()
    try:
        root = ET.fromstring(label_config)
    except ET.ParseError:
        return set()
    return {
        label.get("value")
        for tag in root.iter()
        if tag.tag in _REGION_TAGS
        for label in tag.iter("Label")
        if label.get("value")
    }


@dataclass
class Annotation:
    ls_annotation_id: int
    completed_by: int | None
    result: list[dict]
    order: tuple  # sort key: most recently updated last


@dataclass
class TaskRecord:
    ls_task_id: int
    image_uri: str
    width: int | None
    height: int | None
    annotations: list[Annotation]
    prediction: list[dict] | None = None
    model_version: str = ""


def read_tasks(
    session, ls_project_id: int, predictions: bool = False, label_studio: str | None = None
) -> tuple[list[TaskRecord], set[str]]:
    """Live tasks with at least one current, not cancelled annotation (by task id), and the
    labels of the project's labelling config; ``label_studio`` names the project's Label Studio
    (see `db.repository.get_project`)."""
    from .repository import current_annotations, get_project, latest_prediction

    project = get_project(session, ls_project_id, label_studio)
    if project is None:
        raise ValueError(f"project {ls_project_id} is not in the database: run `labeler sync` (or connect the backend) first")
    tasks: dict[int, TaskRecord] = {}
    for revision in current_annotations(session, project):
        if revision.was_cancelled or revision.result is None:
            continue
        task = revision.task
        record = tasks.setdefault(
            task.ls_task_id, TaskRecord(task.ls_task_id, task.image_uri, task.width, task.height, [])
        )
        stamp = revision.ls_updated_at or revision.ls_created_at or revision.received_at
        order = (stamp.timestamp() if stamp else 0.0, revision.id)
        record.annotations.append(Annotation(revision.ls_annotation_id, revision.completed_by, revision.result, order))
    if predictions:
        for record in tasks.values():
            prediction = latest_prediction(session, project, record.ls_task_id)
            if prediction is not None:
                record.prediction = list(prediction.results or [])
                record.model_version = prediction.model_version.name
    return [tasks[k] for k in sorted(tasks)], config_labels(project.label_config)


def chosen_annotations(annotations: list[Annotation], mode: str) -> list[Annotation]:
    """The annotations `combine` uses, oldest first: the most recently updated one ("latest"),
    or each annotator's most recently updated one ("majority")."""
    ordered = sorted(annotations, key=lambda a: a.order)
    if mode == "latest":
        return [ordered[-1]]
    per_annotator: dict[Any, Annotation] = {}
    for annotation in ordered:  # later ones replace earlier ones of the same annotator
        key = annotation.completed_by if annotation.completed_by is not None else f"a{annotation.ls_annotation_id}"
        per_annotator[key] = annotation
    return sorted(per_annotator.values(), key=lambda a: a.order)
