"""Database tables. Nothing is deleted; predictions and annotation revisions are append-only;
only projects' title/config, tasks' soft deletion and tasks' missing hash/size are updated.

All timestamps are timezone-aware UTC; ``ls_*`` columns hold Label Studio's own ids.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from .heatmaps import decode_heatmap
from .timestamps import UTCDateTime, utcnow

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

REVISION_ACTIONS = ("created", "updated", "deleted")
JOB_STATES = ("queued", "running", "done", "failed")
PROMOTION_REASONS = ("trained", "promote", "rollback")
PROMOTION_ROLES = ("prelabel", "clicks")  # what a promoted model does: pre-labels tasks, answers clicks

_LIVE = "deleted_at IS NULL"


class Base(DeclarativeBase):
    """Declarative base whose metadata names every constraint and index."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Project(Base):
    """A Label Studio project, keyed by the Label Studio it lives in (``label_studio``, a
    normalised base URL from `db.identity`; "" when unknown) and its id there."""

    __tablename__ = "projects"
    __table_args__ = (UniqueConstraint("label_studio", "ls_project_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    label_studio: Mapped[str] = mapped_column(String(255), default="", server_default="")
    ls_project_id: Mapped[int] = mapped_column(BigInteger)
    title: Mapped[str | None] = mapped_column(String(255))
    label_config: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Task(Base):
    """One image task. Label Studio reuses task ids after deletes: a deleted task keeps its row
    (``deleted_at`` set) and at most one live row exists per (project, ls_task_id).

    ``patient_key`` is the task data's ``patient`` value (a keyed hash, see
    ``labeler.patients``; None when the task has none) and ``source_name`` its ``source`` value
    (the original file's path as imported, relative to the folder or manifest it came from)."""

    __tablename__ = "tasks"
    __table_args__ = (
        Index("ix_tasks_project_id_ls_task_id", "project_id", "ls_task_id"),
        Index("ix_tasks_project_id_content_hash", "project_id", "content_hash"),
        Index("ix_tasks_project_id_source_name", "project_id", "source_name"),
        Index(
            "uq_tasks_project_id_ls_task_id_live",
            "project_id",
            "ls_task_id",
            unique=True,
            sqlite_where=text(_LIVE),
            postgresql_where=text(_LIVE),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"))
    ls_task_id: Mapped[int] = mapped_column(BigInteger)
    image_uri: Mapped[str] = mapped_column(Text)
    content_hash: Mapped[str | None] = mapped_column(String(64))
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    patient_key: Mapped[str | None] = mapped_column(String(64))
    source_name: Mapped[str | None] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    project: Mapped[Project] = relationship()

    @property
    def is_live(self) -> bool:
        """True while the task has not been deleted in Label Studio."""
        return self.deleted_at is None


class ModelVersion(Base):
    """A model_version string sent to Label Studio and what it stands for."""

    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    weights_id: Mapped[str] = mapped_column(String(255))
    settings: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Prediction(Base):
    """One pre-label answer for a task (append-only).

    ``probabilities`` maps class name to probability in [0, 1]; ``score`` is the score sent to
    Label Studio; ``class_name`` is the class the heatmap explains; ``heatmap`` holds the
    low-resolution map in `db.heatmaps` encoding; ``results`` the regions sent.
    """

    __tablename__ = "predictions"
    # stats' candidate predictions per chunk of tasks, read from the index alone
    __table_args__ = (Index("ix_predictions_task_id_model_version_id_created_at", "task_id", "model_version_id", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    probabilities: Mapped[dict[str, float]] = mapped_column(JSON)
    predicted_class: Mapped[str] = mapped_column(String(255))
    score: Mapped[float] = mapped_column(Float)
    class_name: Mapped[str] = mapped_column(String(255))
    heatmap: Mapped[bytes | None] = mapped_column(LargeBinary)
    results: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    task: Mapped[Task] = relationship()
    model_version: Mapped[ModelVersion] = relationship()

    @property
    def heatmap_array(self) -> np.ndarray | None:
        """The decoded (H, W) float32 heatmap in [0, 1], or None when none was stored."""
        return None if self.heatmap is None else decode_heatmap(self.heatmap)


class AnnotationRevision(Base):
    """One received state of a Label Studio annotation (append-only).

    ``action`` is created, updated or deleted; ``result`` is the regions JSON (None when
    deleted); ``lead_time`` is in seconds; ``fingerprint`` is unique so that a repeated webhook
    delivery adds nothing.
    """

    __tablename__ = "annotation_revisions"
    __table_args__ = (
        CheckConstraint("action IN ('created', 'updated', 'deleted')", name="action"),
        # per task, each annotation's revisions read from the index alone (sync's counts, stats' chunks)
        Index("ix_annotation_revisions_task_id_ls_annotation_id", "task_id", "ls_annotation_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    ls_annotation_id: Mapped[int] = mapped_column(BigInteger, index=True)
    action: Mapped[str] = mapped_column(String(16))
    result: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    completed_by: Mapped[int | None] = mapped_column(BigInteger)
    updated_by: Mapped[int | None] = mapped_column(BigInteger)
    lead_time: Mapped[float | None] = mapped_column(Float)
    was_cancelled: Mapped[bool] = mapped_column(Boolean, default=False)
    ground_truth: Mapped[bool] = mapped_column(Boolean, default=False)
    ls_created_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ls_updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    parent_prediction: Mapped[int | None] = mapped_column(BigInteger)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)

    task: Mapped[Task] = relationship()


class Failure(Base):
    """Something that went wrong while pre-labelling: a short ``kind`` code and a one-line
    message free of patient data."""

    __tablename__ = "failures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id"), index=True)
    ls_task_id: Mapped[int | None] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    project: Mapped[Project | None] = relationship()


class LabelStudioLink(Base):
    """What a Label Studio told the backend in /setup for one of its projects: its identity (see
    `db.identity`), base URL and access token, keyed by Label Studio's project key
    ``"<id>.<created epoch>"``. Kept here so that every backend worker reads the same; replaced
    only through an authenticated /setup (see RELIABILITY.md)."""

    __tablename__ = "label_studio_links"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_key: Mapped[str] = mapped_column(String(64), unique=True)
    label_studio: Mapped[str] = mapped_column(String(255))
    url: Mapped[str] = mapped_column(String(255))
    token: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Installation(Base):
    """This database's one row of installation-wide values. ``patient_key_secret`` (64 hex
    characters, made by migration 0002) keys the HMAC of the patient values put in Label Studio
    task data (see `db.installation`)."""

    __tablename__ = "installation"
    __table_args__ = (CheckConstraint("id = 1", name="one_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, default=1)
    patient_key_secret: Mapped[str] = mapped_column(String(64))


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class TrainingJob(Base):
    """One segmenter training run of a project, queued then claimed by one worker.

    ``state`` goes queued -> running -> done | failed (a running job whose worker stops
    sending heartbeats goes back to queued, see `db.jobs.requeue_stale`). Partial unique
    indexes let a project have at most one queued and one running job. ``trigger`` says who
    asked ("label-studio", "every-annotations", "command", ...); ``worker`` is "host:pid";
    ``attempts`` counts claims; ``progress`` is e.g. "epoch 3/30"; ``message`` one line of
    result or error; ``revision_mark`` the project's largest annotation_revisions.id when the
    job was queued; ``segmenter_id`` the model it produced.
    """

    __tablename__ = "training_jobs"
    __table_args__ = (
        CheckConstraint(_one_of("state", JOB_STATES), name="state"),
        Index(
            "uq_training_jobs_project_id_queued",
            "project_id",
            unique=True,
            sqlite_where=text("state = 'queued'"),
            postgresql_where=text("state = 'queued'"),
        ),
        Index(
            "uq_training_jobs_project_id_running",
            "project_id",
            unique=True,
            sqlite_where=text("state = 'running'"),
            postgresql_where=text("state = 'running'"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    state: Mapped[str] = mapped_column(String(16), default="queued")
    trigger: Mapped[str] = mapped_column(String(32))
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    worker: Mapped[str | None] = mapped_column(String(200))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    progress: Mapped[str | None] = mapped_column(String(200))
    message: Mapped[str | None] = mapped_column(Text)
    revision_mark: Mapped[int | None] = mapped_column(Integer)
    # segmenters.job_id points back here: this side is added after both tables exist
    segmenter_id: Mapped[int | None] = mapped_column(ForeignKey("segmenters.id", use_alter=True))

    project: Mapped[Project] = relationship()


class SegmenterModel(Base):
    """A trained segmenter (append-only): the .keras file's bytes (``weights``, loaded only when
    read), their hash ``weights_id``, the model ``spec`` and training ``settings``, the task ids
    it was trained, validated and tested on (``data``: {"train": [...], "val": [...], "test":
    [...]}), ``metrics`` ({"candidate": {...}, "incumbent": {...}}) and a one-line ``verdict``."""

    __tablename__ = "segmenters"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("training_jobs.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    weights_id: Mapped[str] = mapped_column(String(64))
    weights: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    verdict: Mapped[str] = mapped_column(Text)

    project: Mapped[Project] = relationship()


class Promotion(Base):
    """One change of a project's model for one ``role`` (append-only): "prelabel" (the pre-label
    source; NULL: Grad-CAM, no segmenter) or "clicks" (the click model; NULL: none). "trained" and
    "promote" make ``segmenter_id`` current, "rollback" returns to the one before and records it in
    ``segmenter_id``. The current model is the replay of the role's rows
    (`db.registry.promotion_stack`)."""

    __tablename__ = "promotions"
    __table_args__ = (
        CheckConstraint(_one_of("reason", PROMOTION_REASONS), name="reason"),
        CheckConstraint(_one_of("role", PROMOTION_ROLES), name="role"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    segmenter_id: Mapped[int | None] = mapped_column(ForeignKey("segmenters.id"))
    reason: Mapped[str] = mapped_column(String(16))
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    role: Mapped[str] = mapped_column(String(16), default="prelabel", server_default="prelabel")


class PrelabelClaim(Base):
    """One task of a project claimed by a ``labeler prelabel`` worker for one model version, so
    that several workers (processes, machines) sharing this database never pre-label a task
    twice (see `db.claims`). ``worker`` is "host:pid"; ``claimed_at`` moves when the claim is
    taken over; ``done_at`` is set once the task's prediction reached Label Studio: a done claim
    is never claimed again."""

    __tablename__ = "prelabel_claims"
    __table_args__ = (UniqueConstraint("project_id", "model_version", "ls_task_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"))
    model_version: Mapped[str] = mapped_column(String(255))
    ls_task_id: Mapped[int] = mapped_column(BigInteger)
    worker: Mapped[str] = mapped_column(String(200))
    claimed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    done_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class SyncMark(Base):
    """How far ``labeler sync`` has read a project (one row per project, replaced at each
    sync): ``mark`` is a Label Studio ``updated_at`` such that every task updated at or before
    it was read; the next sync asks only for tasks updated after it. ``synced_at`` is when
    that sync finished (our clock)."""

    __tablename__ = "sync_marks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), unique=True)
    mark: Mapped[datetime] = mapped_column(UTCDateTime)
    synced_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
