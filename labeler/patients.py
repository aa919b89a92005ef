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
