"""Our own record of Label Studio work: SQLAlchemy 2.0 schema, engines, repository functions and
the Alembic migrations that ship with the package. Imports nothing else of this project.

Typical start::

    migrate(url)
    Session = session_factory(make_engine(url))
    with Session.begin() as session:
        project = upsert_project(session, 7, title="CXR")
"""
from .engine import make_engine, session_factory
from .fingerprints import revision_fingerprint
from .heatmaps import decode_heatmap, encode_heatmap
from .migrating import alembic_config, head_revision, migrate
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
    model_version,
    predictions_for,
    record_deletion,
    revisions,
    upsert_project,
)
from .schema import (
    AnnotationRevision,
    Base,
    Failure,
    ModelVersion,
    Prediction,
    Project,
    Task,
)
from .timestamps import parse_ls_time, utcnow

__all__ = [
    "AnnotationRevision",
    "Base",
    "Failure",
    "ModelVersion",
    "Prediction",
    "Project",
    "Task",
    "add_annotation_revision",
    "add_failure",
    "add_prediction",
    "alembic_config",
    "current_annotations",
    "decode_heatmap",
    "delete_tasks",
    "encode_heatmap",
    "get_live_task",
    "get_model_version",
    "get_project",
    "head_revision",
    "latest_prediction",
    "live_task",
    "make_engine",
    "migrate",
    "model_version",
    "parse_ls_time",
    "predictions_for",
    "record_deletion",
    "revision_fingerprint",
    "revisions",
    "session_factory",
    "upsert_project",
    "utcnow",
]
