"""``labeler init``: a Label Studio project set up for pre-labelling (``labeler import`` is `labeler.importing`)."""
from __future__ import annotations

from pathlib import Path

import requests

from explain.labelstudio.configs import labeling_config
from labeler.workspace import Workspace
from models.spec import load_spec


def init_project(
    ws: Workspace, model_path: Path, title: str, backend_url: str | None, region_labels=None, region_kinds=None,
    interactive: bool = False,
) -> int:
    """Create (or, with ``ws.project_id``, update) the project whose config comes from the model
    spec (``labeling_config``'s defaults where ``region_labels`` / ``region_kinds`` are None);
    connect the backend and check that its webhook is registered. ``interactive``: the config
    has the smart tools and the backend is connected for interactive pre-annotations. Returns the
    project id."""
    options = {"region_labels": region_labels, "region_kinds": region_kinds}
    config = labeling_config(
        load_spec(model_path).class_names, **{k: v for k, v in options.items() if v}, interactive=interactive
    )
    if ws.project_id is None:
        project_id = ws.client.projects.create(title=title, label_config=config).id
    else:
        project_id = ws.project_id
        ws.client.projects.update(id=project_id, title=title, label_config=config)
    if backend_url:
        connect_backend(ws, project_id, backend_url.rstrip("/"), interactive)
    return project_id


def connect_backend(ws: Workspace, project_id: int, backend_url: str, interactive: bool = False):
    """The backend as the project's ML backend, and exactly one webhook to its /webhook;
    ``interactive``: used for interactive pre-annotations (Label Studio's "Use for interactive
    preannotations", ``is_interactive``), also when it was connected before without it."""
    try:
        health = requests.get(f"{backend_url}/health", timeout=5).json()
    except (requests.RequestException, ValueError):
        raise ValueError(f"the backend at {backend_url} does not answer /health") from None
    if health.get("status") != "UP":
        raise ValueError(f"the backend at {backend_url} is not up: {health}")
    connected = [m for m in ws.client.ml.list(project=project_id) if m.url.rstrip("/") == backend_url]
    if not connected:
        extra = {"is_interactive": True} if interactive else {}
        ws.client.ml.create(project=project_id, url=backend_url, title="Grad-CAM pre-labels", **extra)
    elif interactive and not any(m.is_interactive for m in connected):
        ws.client.ml.update(id=connected[0].id, is_interactive=True)
    hooks = [h for h in ws.client.webhooks.list(project=project_id) if h.url.rstrip("/") == f"{backend_url}/webhook"]
    if not hooks:  # Label Studio registers it when it connects the backend; older servers do not
        ws.client.webhooks.create(project=project_id, url=f"{backend_url}/webhook", send_payload=True, send_for_all_actions=True)


def set_active_model_version(ws: Workspace, project_id: int, version: str):
    """Make ``version`` the project's active model version. Label Studio's Data Manager shows (and
    sorts by) the prediction score of the active version's predictions only; a project whose
    active version is anything else, the ML backend's title say, shows no score at all. Label
    Studio accepts only a version that some prediction of the project (or a backend title) has."""
    ws.client.projects.update(id=project_id, model_version=version)
