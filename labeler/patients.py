"""Patient keys in Label Studio task data, and ``labeler rekey-patients``.

A DICOM's PatientID never leaves this machine: a task's ``patient`` value is
``"k1:" + HMAC-SHA256(secret, sha256(PatientID) hex[:16])`` hex[:24]. The secret is this
installation's (`db.installation.patient_key_secret`, made by a migration) unless the environment
variable PATIENT_KEY_SECRET (at least 32 characters) sets one shared across databases; it is used
as UTF-8 bytes. The HMAC is taken over the old unsalted value (``sha256(PatientID)`` hex[:16],
which earlier versions stored and anyone could reverse by enumerating IDs), so old values can be
re-keyed without knowing the PatientID and land on exactly the key a fresh import gives.
"""
from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

from labeler.workspace import Workspace

PREFIX = "k1:"
SECRET_ENV = "PATIENT_KEY_SECRET"
MIN_SECRET_CHARS = 32


def unsalted(patient_id: str) -> str:
    """The old, reversible value: sha256(PatientID) as 16 hex characters."""
    return hashlib.sha256(patient_id.encode()).hexdigest()[:16]


def keyed(old_value: str, secret: str) -> str:
    """The stored key for an old (unkeyed) ``patient`` value: ``k1:`` + 24 hex characters."""
    return PREFIX + hmac.new(secret.encode(), old_value.encode(), hashlib.sha256).hexdigest()[:24]


def patient_key(patient_id: str, secret: str) -> str:
    """The ``patient`` value of a new task whose DICOM has this PatientID."""
    return keyed(unsalted(patient_id), secret)


def is_unkeyed(value) -> bool:
    """True for a ``patient`` value written before keys had a secret (not ``k1:``-prefixed)."""
    return isinstance(value, str) and value != "" and not value.startswith(PREFIX)


def patient_secret(ws: Workspace) -> str:
    """PATIENT_KEY_SECRET when set, else the secret of the workspace's database."""
    shared = os.environ.get(SECRET_ENV)
    if shared is not None:
        if len(shared) < MIN_SECRET_CHARS:
            raise ValueError(f"{SECRET_ENV} must be at least {MIN_SECRET_CHARS} characters (e.g. `openssl rand -hex 32`)")
        return shared
    from db.installation import patient_key_secret

    with ws.sessions() as session:
        return patient_key_secret(session)


@dataclass(frozen=True)
class Rekeyed:
    rekeyed: int  # tasks whose ``patient`` value was rewritten now
    already: int  # tasks whose value already had a key


def rekey_project(ws: Workspace) -> Rekeyed:
    """Rewrite every task's unkeyed ``patient`` value to its key, one task at a time (so an
    interrupted run is finished by the next; a rerun changes nothing). Other data is kept as is."""
    project_id = ws.require_project()
    tasks = list(ws.client.tasks.list(project=project_id, fields="task_only", resolve_uri=False))
    pending = [t for t in tasks if is_unkeyed((t.data or {}).get("patient"))]
    secret = patient_secret(ws) if pending else ""
    for task in pending:
        data = dict(task.data)
        data["patient"] = keyed(data["patient"], secret)
        ws.client.tasks.update(id=str(task.id), data=data)
    already = sum(1 for t in tasks if str((t.data or {}).get("patient", "")).startswith(PREFIX))
    return Rekeyed(len(pending), already)


BACKFILL_IDS = 200  # task ids per Label Studio request (they travel in the URL's query)


def backfill_patient_keys(ws: Workspace, ls_task_ids: list[int]) -> dict[int, str]:
    """The patient keys of tasks whose row in our database has none (rows older than
    ``tasks.patient_key``), read from their Label Studio data and written into our database so
    that the next reader finds them there. Label Studio is asked for these tasks only (a Data
    Manager ``selectedItems`` filter, ``BACKFILL_IDS`` ids per request, cheap fields), never once
    per task. Returns task id -> key for the tasks whose data has one; when the database cannot
    be written (e.g. read-only) the keys are only returned."""
    import json

    from sqlalchemy.exc import SQLAlchemyError

    from db.repository import fill_patient_keys, get_project, task_origin

    project_id = ws.require_project()
    keys: dict[int, str] = {}
    for start in range(0, len(ls_task_ids), BACKFILL_IDS):
        part = [int(t) for t in ls_task_ids[start:start + BACKFILL_IDS]]
        asked, part_set = set(part), set(part)
        query = json.dumps({"selectedItems": {"all": False, "included": part}})
        page = ws.client.tasks.list(project=project_id, fields="task_only", query=query, page=1,
                                    page_size=BACKFILL_IDS, resolve_uri=False)
        while page is not None:  # one page holds them all (a task deleted in Label Studio is not listed)
            listed = page.items or []
            for task in listed:
                asked.discard(task.id)
                key = task_origin(task.data)["patient_key"]
                if key is not None and task.id in part_set:
                    keys[task.id] = key
            page = page.next_page() if asked and len(listed) == BACKFILL_IDS else None
    if keys:
        try:
            with ws.sessions.begin() as session:
                project = get_project(session, project_id, ws.label_studio)
                if project is not None:
                    fill_patient_keys(session, project, keys)
        except SQLAlchemyError:  # a read-only database: this export uses the keys all the same
            pass
    return keys
