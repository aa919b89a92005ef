"""`labeler train`, `labeler models list|promote|rollback`, and `labeler prelabel` following the
project's promoted segmenter as the backend does (the same version for the same models), against
a real Label Studio and a real SQLite database."""
from __future__ import annotations

import json

import cv2
import pytest
from typer.testing import CliRunner

from backend.app import create_app
from db import registry, repository
from db.engine import make_engine, session_factory
from labeler.cli import app
from models.loading import load_model, load_segmenter
from test_backend import make_settings
from test_backend_interactive import click_model_path  # noqa: F401  (a tiny clicker)
from test_segmenter import models, synthetic_set  # noqa: F401  (a tiny classifier and U-Net)

pytestmark = pytest.mark.train


def test_prelabel_follows_the_promoted_segmenter_and_models_commands_switch_it(models, click_model_path, label_studio, ls, tmp_path):  # noqa: F811
    classifier_path, segmenter_path = models
    database_url = f"sqlite:///{tmp_path / 'labeler.db'}"
    env = {
        "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token, "DATABASE_URL": database_url,
        "LOCAL_FILES_DOCUMENT_ROOT": str(label_studio.document_root),
    }
    runner = CliRunner()

    def labeler(*args):
        return runner.invoke(app, [str(a) for a in args], env=env)

    output = labeler("init", "--model", classifier_path, "--title", "registry").output
    env["LABEL_STUDIO_PROJECT"] = project = output.split("LABEL_STUDIO_PROJECT=")[1].split()[0]
    folder = tmp_path / "images"
    folder.mkdir()
    for n, image in enumerate(synthetic_set(3, seed=17, opacity_share=1.0)[0]):
        cv2.imwrite(str(folder / f"img{n}.png"), image[..., 0])
    assert labeler("import", folder).exit_code == 0

    nothing = labeler("models", "list")  # the import recorded the project: nothing trained yet
    assert nothing.exit_code == 0 and "Grad-CAM (no promoted segmenter)" in nothing.output
    unknown = labeler("models", "list", "--project", "999")
    assert unknown.exit_code == 2 and "not in the database" in unknown.output
    gradcam = labeler("prelabel", "--model", classifier_path)
    assert gradcam.exit_code == 0 and "promoted segmenter" not in gradcam.output

    sessions = session_factory(make_engine(database_url))
    segmenter = load_segmenter(segmenter_path)
    with sessions.begin() as session:
        row = repository.get_project(session, int(project))
        model = registry.add_segmenter(
            session, row, segmenter_path.read_bytes(), segmenter.version, json.loads(segmenter.spec.to_json()),
            {"size": 64}, {"train": [1, 2], "val": [], "test": [3]}, {"candidate": {"edit": 0.4, "dice": 0.7}},
            "promoted: by the test",
        )
        registry.promote(session, row, model.id, "trained")
        model_id = model.id

    listed = labeler("models", "list")
    assert listed.exit_code == 0 and f"segmenter #{model_id}" in listed.output and segmenter.version in listed.output
    result = labeler("prelabel", "--model", classifier_path)
    assert result.exit_code == 0, result.output
    assert f"promoted segmenter #{model_id}" in result.output
    backend = create_app(make_settings(tmp_path, classifier_path, label_studio.document_root, database_url=database_url,
                                       label_studio_url=label_studio.url, cam_threshold="fraction:0.2"))
    version = backend.test_client().post("/setup", json={"project": f"{project}.1"}).json["model_version"]
    assert f"segmenter:{segmenter.version}" in version
    assert {p.model_version for p in ls.predictions.list(project=int(project))} >= {version}
    assert ls.projects.get(id=int(project)).model_version == version  # the Data Manager shows these scores

    back = labeler("models", "rollback")
    assert back.exit_code == 0 and "Grad-CAM" in back.output
    assert "segmenter:" not in backend.test_client().post("/setup", json={"project": f"{project}.1"}).json["model_version"]
    again = labeler("models", "rollback")
    assert again.exit_code == 2 and "nothing to roll back" in again.output
    assert labeler("models", "promote", model_id).exit_code == 0
    assert backend.test_client().post("/setup", json={"project": f"{project}.1"}).json["model_version"] == version
    foreign = labeler("models", "promote", model_id + 100)
    assert foreign.exit_code == 2 and f"model {model_id + 100} is not a model of project {project}" in foreign.output

    # a click model has its own stack: promoting it or rolling it back never moves the pre-label source
    clicker = load_model(click_model_path, kind="clicker")
    with sessions.begin() as session:
        clicker_id = registry.add_segmenter(
            session, repository.get_project(session, int(project)), click_model_path.read_bytes(), clicker.version,
            json.loads(clicker.spec.to_json()), {}, {"train": [1], "val": [], "test": [3]},
            {"candidate": {"dice": 0.81, "last": 0.9, "n": 1}, "clicks": 5}, "kept: by the test",
        ).id
    listed = labeler("models", "list").output
    assert "clicks answered by: CLICK_MODEL, else the maps alone" in listed
    assert f"#{clicker_id}  click model" in listed and "Dice over 5 clicks 0.810" in listed
    promoted = labeler("models", "promote", clicker_id)
    assert promoted.exit_code == 0 and f"click model #{clicker_id} now answers the clicks of project {project}" in promoted.output
    listed = labeler("models", "list").output
    assert f"clicks answered by: click model #{clicker_id}" in listed and f"pre-labels come from: segmenter #{model_id}" in listed
    assert f"* #{clicker_id}  click model" in listed and f"* #{model_id}  segmenter" in listed
    back = labeler("models", "rollback", "--clicks")
    assert back.exit_code == 0 and "clicks now answered by CLICK_MODEL, else the maps alone" in back.output
    assert f"pre-labels come from: segmenter #{model_id}" in labeler("models", "list").output
    none_left = labeler("models", "rollback", "--clicks")
    assert none_left.exit_code == 2 and "no clicks promotion left" in none_left.output

    queued, joined = labeler("train"), labeler("train")
    assert queued.exit_code == 0 and "training job 1 queued" in queued.output
    assert "training job 1 was already queued" in joined.output
    waited = labeler("train", "--wait", "--timeout", "1")
    assert waited.exit_code == 2 and "still queued" in waited.output  # no backend runs jobs here
