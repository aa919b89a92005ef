"""``labeler import`` of real archives against a real Label Studio (labeler/importing.py): manifest
columns and keyed patients on the tasks and in our database, one error line per bad file or row,
reruns that read nothing already imported, a kill between a bulk request and its database write
healed without duplicates, and the unkeyed-patient refusal by a Data Manager filter."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import requests
import sqlalchemy as sa
from typer.testing import CliRunner

from db.engine import make_engine, session_factory
from db.installation import patient_key_secret
from db.migrating import migrate
from db.schema import Task
from explain.labelstudio.configs import labeling_config
from labeler import importing
from labeler.cli import app
from labeler.importing import import_images
from labeler.patients import patient_key
from labeler.workspace import Workspace
from test_workflow import write_dicom


@pytest.fixture(autouse=True)
def no_shared_secret(monkeypatch):
    monkeypatch.delenv("PATIENT_KEY_SECRET", raising=False)


def write_png(path, seed: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, 255, (24, 32), dtype=np.uint8))
    return path


class Setup:
    """A fresh project, our database and the env of the CLI."""

    def __init__(self, label_studio, ls, tmp_path, title):
        self.ls, self.studio = ls, label_studio
        self.project = ls.projects.create(title=title, label_config=labeling_config(["clear", "opacity"])).id
        self.url = f"sqlite:///{tmp_path / 'labeler.db'}"
        migrate(self.url)
        self.ws = Workspace(label_studio.url, label_studio.token, self.project, self.url)
        self.root = label_studio.document_root
        self.env = {
            "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token,
            "LABEL_STUDIO_PROJECT": str(self.project), "DATABASE_URL": self.url,
            "LOCAL_FILES_DOCUMENT_ROOT": str(label_studio.document_root),
        }

    def cli(self, *args):
        return CliRunner().invoke(app, ["import", *map(str, args)], env=self.env, catch_exceptions=False)

    def tasks(self) -> list:
        return list(self.ls.tasks.list(project=self.project, fields="task_only", resolve_uri=False))

    def rows(self) -> list:
        engine = make_engine(self.url)
        try:
            with session_factory(engine)() as session:
                return list(session.scalars(sa.select(Task).where(Task.deleted_at.is_(None)).order_by(Task.ls_task_id)))
        finally:
            engine.dispose()

    def secret(self) -> str:
        engine = make_engine(self.url)
        try:
            with session_factory(engine)() as session:
                return patient_key_secret(session)
        finally:
            engine.dispose()


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def test_manifest_columns_and_keyed_patients_land_on_tasks_and_in_our_database(label_studio, ls, tmp_path):
    s = Setup(label_studio, ls, tmp_path, "manifest")
    archive = tmp_path / "archive"
    write_png(archive / "2021" / "a.png", 1)
    write_png(archive / "2021" / "b.png", 2)
    write_dicom(archive / "scan.dcm", "DICOM-PATIENT-7", seed=3)
    (archive / "manifest.csv").write_text(
        "path,patient,study,date,split,View Position\n"
        "2021/a.png,MRN-0001,ST-1,2021-05-06,train,PA\n"
        "2021/b.png,MRN-0002,ST-2,,val,AP\n"
        "scan.dcm,,ST-3,,test,\n"  # no patient column value: the DICOM's PatientID
    )
    result = s.cli("--manifest", archive / "manifest.csv")
    assert result.exit_code == 0 and "imported 3, skipped 0" in result.output, result.output
    secret = s.secret()
    by_source = {t.data["source"]: t for t in s.tasks()}
    assert set(by_source) == {"2021/a.png", "2021/b.png", "scan.dcm"}
    a, b, scan = (by_source[name].data for name in ("2021/a.png", "2021/b.png", "scan.dcm"))
    assert a["patient"] == patient_key("MRN-0001", secret) and b["patient"] == patient_key("MRN-0002", secret)
    assert scan["patient"] == patient_key("DICOM-PATIENT-7", secret)
    assert {k: a[k] for k in ("study", "date", "split", "view_position")} == {
        "study": "ST-1", "date": "2021-05-06", "split": "train", "view_position": "PA"
    }
    assert "date" not in b and scan["split"] == "test" and "view_position" not in scan
    everything = json.dumps([t.data for t in by_source.values()])
    assert not any(raw in everything for raw in ("MRN-0001", "MRN-0002", "DICOM-PATIENT-7", "Doe"))
    rows = {r.ls_task_id: r for r in s.rows()}
    assert set(rows) == {t.id for t in by_source.values()}
    for task in by_source.values():
        row = rows[task.id]
        assert (row.source_name, row.patient_key, row.content_hash) == (
            task.data["source"], task.data["patient"], task.data["content_hash"]
        )
        assert row.image_uri == task.data["image"]

    # a folder tree beside it: sources from the folder's name, no patient for PNGs
    write_png(tmp_path / "more" / "x" / "c.png", 4)
    result = s.cli(tmp_path / "more")
    assert result.exit_code == 0 and "imported 1, skipped 0" in result.output, result.output
    (new,) = [t.data for t in s.tasks() if t.data["source"] not in by_source]
    assert new["source"] == "more/x/c.png" and "patient" not in new


def test_each_bad_row_or_file_is_one_error_line_and_the_others_import(label_studio, ls, tmp_path):
    s = Setup(label_studio, ls, tmp_path, "bad rows")
    folder = tmp_path / "data"
    write_png(folder / "good1.png", 11)
    write_png(folder / "good2.png", 12)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a PNG")
    (folder / "manifest.csv").write_text(
        "path,patient,split,content_hash\n"
        "good1.png,SECRET-ID-1,train,x\n"
        "missing.png,SECRET-ID-2,train,x\n"
        "broken.png,SECRET-ID-3,val,x\n"
        "good2.png,SECRET-ID-4,holdout,x\n"  # a bad split: not imported
        "good2.png,SECRET-ID-4,test,x\n"
    )
    result = s.cli("--manifest", folder / "manifest.csv")
    assert result.exit_code == 1, result.output
    lines = error_lines(result)
    assert len(lines) == 4, result.stderr
    assert lines[0] == "error: manifest.csv: column 'content_hash' is reserved (the import writes 'content_hash'); it is ignored"
    assert lines[1] == "error: manifest.csv line 3: missing.png: no such file"
    assert lines[2].startswith("error: manifest.csv line 4: broken.png: ")
    assert lines[3] == "error: manifest.csv line 5: good2.png: split must be one of train, val, test"
    assert "SECRET-ID" not in result.output + result.stderr and str(tmp_path) not in result.stderr
    assert "imported 2, skipped 0 already in the project, 4 failed" in result.output
    tasks = s.tasks()
    assert sorted(t.data["source"] for t in tasks) == ["good1.png", "good2.png"]
    assert all(t.data["content_hash"] != "x" for t in tasks)
    assert len(s.rows()) == 2


def test_a_rerun_reads_no_file_already_imported_and_lists_no_project(label_studio, ls, tmp_path, monkeypatch):
    s = Setup(label_studio, ls, tmp_path, "rerun")
    folder = tmp_path / "images"
    for i in range(7):
        write_png(folder / f"{i}.png", 20 + i)
    write_png(folder / "copy" / "same-as-0.png", 20)  # the same image under another name
    first = import_images(s.ws, [folder], s.root, batch=3)
    assert (first.added, first.skipped, first.errors) == (7, 1, [])

    reads, seen = [], []
    monkeypatch.setattr(importing, "read_file", lambda path: reads.append(path.name) or path.read_bytes())
    get = requests.get

    def recording_get(url, *args, **kwargs):
        seen.append((url, kwargs.get("params") or {}))
        return get(url, *args, **kwargs)

    monkeypatch.setattr(importing.requests, "get", recording_get)
    (folder / "0.png").unlink()  # gone: a rerun that read it would fail
    write_png(folder / "new.png", 40)
    again = import_images(s.ws, [folder], s.root, batch=3)
    assert (again.added, again.errors) == (1, [])
    assert again.skipped == 7  # six by source without reading, same-as-0 by content after reading it
    assert sorted(reads) == ["new.png", "same-as-0.png"]
    assert len(s.tasks()) == 8 == len(s.rows())
    listed = [params for url, params in seen if url.rstrip("/").endswith("/api/tasks")]
    assert listed and all(json.loads(p["query"]).get("filters") or p["page_size"] == 1 for p in listed)


class Killed(Exception):
    pass


def test_a_kill_between_a_bulk_request_and_its_database_write_is_healed_by_the_rerun(label_studio, ls, tmp_path, monkeypatch):
    """Batch 2 reaches Label Studio but not our database; before the rerun another writer (as the
    backend's /predict would) records a later task. The rerun still finds batch 2: one task per file."""
    s = Setup(label_studio, ls, tmp_path, "killed")
    folder = tmp_path / "images"
    for i in range(7):
        write_png(folder / f"{i}.png", 50 + i)
    record = importing._Run.record
    calls = []

    def dying_record(run, tasks):
        calls.append(len(tasks))
        if len(calls) == 2:
            raise Killed()
        return record(run, tasks)

    monkeypatch.setattr(importing._Run, "record", dying_record)
    with pytest.raises(Killed):
        import_images(s.ws, [folder], s.root, batch=2)
    assert len(s.tasks()) == 4 and len(s.rows()) == 2
    # a task created later and recorded by someone else, above the unrecorded batch
    other = ls.projects.import_tasks(
        id=s.project, request=[{"data": {"image": "/data/x.png", "source": "elsewhere.png"}}], return_task_ids=True
    ).task_ids[0]
    engine = make_engine(s.url)
    try:
        from db import repository

        with session_factory(engine).begin() as session:
            project = repository.upsert_project(session, s.project, label_studio=s.ws.label_studio)
            repository.live_task(session, project, other, "/data/x.png", source_name="elsewhere.png")
    finally:
        engine.dispose()

    monkeypatch.setattr(importing._Run, "record", record)
    result = s.cli(folder, "--batch-size", "2")
    assert result.exit_code == 0, result.output
    assert "recorded 2 task(s) that an interrupted import had created" in result.output
    assert "imported 3, skipped 4" in result.output
    sources = sorted(t.data["source"] for t in s.tasks())
    assert sources == sorted([f"images/{i}.png" for i in range(7)] + ["elsewhere.png"])
    assert sorted(r.source_name for r in s.rows()) == sources
    assert not list((s.root / f"labeler-{s.project}").glob(".import-pending-*"))
    again = s.cli(folder)
    assert "imported 0, skipped 7" in again.output and "recorded" not in again.output


def test_a_project_with_an_unkeyed_patient_value_is_refused_without_listing_it(label_studio, ls, tmp_path, monkeypatch):
    s = Setup(label_studio, ls, tmp_path, "unkeyed")
    keyed = patient_key("P-1", s.secret())
    ls.projects.import_tasks(id=s.project, request=[
        {"data": {"image": "/x/1.png", "patient": keyed}},
        {"data": {"image": "/x/2.png"}},
        {"data": {"image": "/x/3.png", "patient": ""}},
        {"data": {"image": "/x/4.png", "patient": 12345}},  # not a string: not an old key (labeler.patients.is_unkeyed)
    ])
    image = write_png(tmp_path / "new.png", 70)
    assert s.cli(image).exit_code == 0  # keyed, empty, absent or non-text values only: imported

    ls.projects.import_tasks(id=s.project, request=[{"data": {"image": "/x/5.png", "patient": "0123456789abcdef"}}])
    monkeypatch.setattr(importing, "read_file", lambda path: pytest.fail("read a file of a refused import"))
    refused = s.cli(write_png(tmp_path / "other.png", 71))
    assert refused.exit_code == 2 and error_lines(refused) == [
        f"error: project {s.project} has 1 task(s) with an old, unkeyed patient value; "
        "run `labeler rekey-patients` first (same --database-url), then import again"
    ], refused.output
    assert len(s.tasks()) == 6


def test_tasks_our_database_does_not_know_are_adopted_once_and_not_imported_again(label_studio, ls, tmp_path):
    """A project imported with another database (an earlier version, another machine, a changed
    Label Studio address): the first import lists the project once, records its tasks, and skips
    their images; the next import lists nothing."""
    s = Setup(label_studio, ls, tmp_path, "adopt")
    folder = tmp_path / "images"
    for i in range(5):
        write_png(folder / f"{i}.png", 60 + i)
    assert import_images(s.ws, [folder], s.root).added == 5
    elsewhere = Workspace(label_studio.url, label_studio.token, s.project, f"sqlite:///{tmp_path / 'fresh.db'}")
    migrate(elsewhere.database_url)
    write_png(folder / "new.png", 90)
    first = import_images(elsewhere, [folder], s.root)
    assert (first.adopted, first.added, first.skipped) == (5, 1, 5)
    assert len(s.tasks()) == 6
    again = import_images(elsewhere, [folder], s.root)
    assert (again.adopted, again.added, again.skipped) == (0, 0, 6)
