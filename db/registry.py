"""The segmenter registry: trained models and the promotions that choose a project's models.
Every function takes a Session and flushes; the caller commits.

Models and promotions are only ever added. A project has one promotion stack per role
(``PROMOTION_ROLES``): "prelabel" chooses the pre-label source (a segmenter, or None: Grad-CAM),
"clicks" the click model that answers annotators' clicks (a clicker, or None: the clicks are
answered from the maps alone). A role's current model is the replay of its promotions in order:
"trained" and "promote" push a model (or None), "rollback" pops; the top of that stack is current,
an empty stack means None.
"""
from __future__ import annotations

from typing import Any, Mapping

from sqlalchemy import select
from sqlalchemy.orm import Session

from .schema import PROMOTION_REASONS, PROMOTION_ROLES, Project, Promotion, SegmenterModel

_PUSHES = ("trained", "promote")
_WEIGHTS_ID_MAX = 64


def _line(text: str | None) -> str | None:
    return None if text is None else " ".join(str(text).split())


def add_segmenter(
    session: Session,
    project: Project,
    weights: bytes,
    weights_id: str,
    spec: Mapping[str, Any],
    settings: Mapping[str, Any],
    data: Mapping[str, Any],
    metrics: Mapping[str, Any],
    verdict: str,
    job_id: int | None = None,
) -> SegmenterModel:
    """Store a trained segmenter of the project.

    ``weights`` are the .keras file's bytes and ``weights_id`` their hash (1..64 characters);
    ``spec`` the model spec, ``settings`` the training settings; ``data`` the task ids used
    ({"train": [...], "val": [...], "test": [...]}); ``metrics`` e.g. {"candidate": {...},
    "incumbent": {...}}; ``verdict`` one line (squeezed), e.g. "promoted: edit 0.61 < 0.82
    (gradcam)"; ``job_id`` the training job that made it.
    """
    if not isinstance(weights, (bytes, bytearray, memoryview)) or not len(weights):
        raise ValueError("weights must be the model file's bytes (non-empty)")
    if not isinstance(weights_id, str) or not weights_id or len(weights_id) > _WEIGHTS_ID_MAX:
        raise ValueError(f"weights_id must be 1..{_WEIGHTS_ID_MAX} characters, got {str(weights_id)[:80]!r}")
    model = SegmenterModel(
        project_id=project.id,
        job_id=job_id,
        weights=bytes(weights),
        weights_id=weights_id,
        spec=dict(spec),
        settings=dict(settings),
        data=dict(data),
        metrics=dict(metrics),
        verdict=_line(verdict),
    )
    session.add(model)
    session.flush()
    return model


def get_segmenter(session: Session, segmenter_id: int) -> SegmenterModel | None:
    """The segmenter with this id (its weights read on first access), or None."""
    return session.get(SegmenterModel, segmenter_id)


def segmenters_of(session: Session, project: Project) -> list[SegmenterModel]:
    """The project's segmenters, newest first; their weights are not read until accessed."""
    return list(
        session.scalars(
            select(SegmenterModel).where(SegmenterModel.project_id == project.id).order_by(SegmenterModel.id.desc())
        )
    )


def role_of(model: SegmenterModel) -> str:
    """The promotion role a stored model can take: "clicks" for a clicker, else "prelabel"."""
    return "clicks" if (model.spec or {}).get("kind") == "clicker" else "prelabel"


def _check_role(role: str) -> None:
    if role not in PROMOTION_ROLES:
        raise ValueError(f"role must be one of {PROMOTION_ROLES}, got {role!r}")


def promotions_of(session: Session, project: Project, role: str = "prelabel") -> list[Promotion]:
    """The project's promotions of ``role``, oldest first."""
    _check_role(role)
    return list(session.scalars(
        select(Promotion).where(Promotion.project_id == project.id, Promotion.role == role).order_by(Promotion.id)
    ))


def _replay(promotions: list[Promotion]) -> list[int | None]:
    stack: list[int | None] = []
    for row in promotions:
        if row.reason == "rollback":
            if stack:
                stack.pop()
        else:
            stack.append(row.segmenter_id)
    return stack


def promotion_stack(session: Session, project: Project, role: str = "prelabel") -> list[int | None]:
    """The project's promotions of ``role`` replayed: model ids (None: Grad-CAM, or no click
    model), the current one last; empty when nothing was ever promoted (or all rolled back)."""
    return _replay(promotions_of(session, project, role))


def current_segmenter(session: Session, project: Project, role: str = "prelabel") -> SegmenterModel | None:
    """The model that pre-labels the project now (None: Grad-CAM), or with ``role="clicks"`` the
    click model that answers its clicks (None: none)."""
    stack = promotion_stack(session, project, role)
    return None if not stack or stack[-1] is None else get_segmenter(session, stack[-1])


def _lock_project(session: Session, project: Project) -> None:
    """Serialise promotions of one project (PostgreSQL row lock; SQLite serialises writers), so
    that two concurrent rollbacks cannot both pop the same top."""
    session.execute(select(Project.id).where(Project.id == project.id).with_for_update())


def _add(session: Session, project: Project, segmenter_id: int | None, reason: str, note: str | None, role: str) -> Promotion:
    row = Promotion(project_id=project.id, segmenter_id=segmenter_id, reason=reason, note=_line(note), role=role)
    session.add(row)
    session.flush()
    return row


def promote(
    session: Session, project: Project, segmenter_id: int | None, reason: str, note: str | None = None,
    role: str | None = None,
) -> Promotion:
    """Make ``segmenter_id`` (a model of this project, or None: back to Grad-CAM / no click model)
    current for ``role``, which defaults to the model's own (``role_of``; "prelabel" for None) and
    must match it. ``reason`` is "trained" (chosen by training's own evaluation) or "promote"
    (chosen by a person); "rollback" is refused here: use `rollback`, which records what becomes
    current. ``note`` is squeezed to one line."""
    if reason not in PROMOTION_REASONS:
        raise ValueError(f"reason must be one of {PROMOTION_REASONS}, got {reason!r}")
    if reason not in _PUSHES:
        raise ValueError("reason 'rollback' is recorded by rollback(), which computes what becomes current")
    if segmenter_id is not None:
        model = get_segmenter(session, segmenter_id)
        if model is None or model.project_id != project.id:
            where = "does not exist" if model is None else "belongs to another project"
            raise ValueError(f"segmenter {segmenter_id} {where}; project {project.ls_project_id} cannot use it")
        own = role_of(model)
        if role is not None and role != own:
            what = "a click model" if own == "clicks" else "a segmenter"
            raise ValueError(f"model {segmenter_id} is {what}: it cannot be promoted for {role!r}")
        role = own
    role = role or "prelabel"
    _check_role(role)
    _lock_project(session, project)
    return _add(session, project, segmenter_id, reason, note, role)


def rollback(session: Session, project: Project, note: str | None = None, role: str = "prelabel") -> Promotion:
    """Undo the project's current promotion of ``role``: the one before it becomes current again
    (None: Grad-CAM, or no click model). Raises ValueError when there is nothing to roll back."""
    _check_role(role)
    _lock_project(session, project)
    stack = promotion_stack(session, project, role)
    if not stack:
        left = "Grad-CAM pre-labels it" if role == "prelabel" else "no click model answers its clicks"
        raise ValueError(f"nothing to roll back: project {project.ls_project_id} has no {role} promotion left ({left})")
    return _add(session, project, stack[-2] if len(stack) > 1 else None, "rollback", note, role)
