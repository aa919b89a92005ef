"""Our own record of Label Studio work: SQLAlchemy 2.0 schema, engines, repository functions and
the Alembic migrations that ship with the package. Imports nothing else of this project.

Typical start::

    migrate(url)
    Session = session_factory(make_engine(url))
    with Session.begin() as session:
        project = upsert_project(session, 7, title="CXR")
"""
from .claims import Claimed, claim_tasks, finish_claims, open_workers, release_claims
from .engine import make_engine, session_factory
from .fingerprints import revision_fingerprint
from .heatmaps import decode_heatmap, encode_heatmap
from .jobs import (
    annotations_since,
    claim_job,
    enqueue_training,
    finish_job,
    heartbeat,
    last_job,
    recent_jobs,
    requeue_stale,
)
from .migrating import alembic_config, head_revision, migrate
from .registry import (
    add_segmenter,
    current_segmenter,
    get_segmenter,
    promote,
    promotion_stack,
    promotions_of,
    role_of,
    rollback,
    segmenters_of,
)
from .repository import (
    add_annotation_revision,
    add_failure,
    add_prediction,
    current_annotations,
    delete_tasks,
    get_live_task,
    get_model_version,
    get_project,
    latest_prediction,
    live_task,
    live_tasks,
    model_version,
    predictions_for,
    record_deletion,
    revisions,
    upsert_project,
)
from .schema import (
    JOB_STATES,
    PROMOTION_REASONS,
    AnnotationRevision,
    Base,
    Failure,
    ModelVersion,
    Prediction,
    PrelabelClaim,
    Project,
    Promotion,
    SegmenterModel,
    Task,
    TrainingJob,
)
from .timestamps import parse_ls_time, utcnow

__all__ = [
    "AnnotationRevision",
    "Base",
    "Claimed",
    "Failure",
    "JOB_STATES",
    "ModelVersion",
    "PROMOTION_REASONS",
    "Prediction",
    "PrelabelClaim",
    "Project",
    "Promotion",
    "SegmenterModel",
    "Task",
    "TrainingJob",
    "add_annotation_revision",
    "add_failure",
    "add_prediction",
    "add_segmenter",
    "alembic_config",
    "annotations_since",
    "claim_tasks",
    "claim_job",
    "current_annotations",
    "current_segmenter",
    "decode_heatmap",
    "delete_tasks",
    "encode_heatmap",
    "finish_claims",
    "enqueue_training",
    "finish_job",
    "get_live_task",
    "get_model_version",
    "get_project",
    "get_segmenter",
    "head_revision",
    "heartbeat",
    "last_job",
    "latest_prediction",
    "live_task",
    "live_tasks",
    "make_engine",
    "migrate",
    "model_version",
    "open_workers",
    "parse_ls_time",
    "predictions_for",
    "promote",
    "promotion_stack",
    "promotions_of",
    "recent_jobs",
    "record_deletion",
    "release_claims",
    "requeue_stale",
    "revision_fingerprint",
    "revisions",
    "role_of",
    "rollback",
    "segmenters_of",
    "session_factory",
    "upsert_project",
    "utcnow",
]
