"""The pre-label pipeline end to end on a model whose heatmap is known: the image's own brightness."""
from __future__ import annotations

import keras
import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle

from explain.gradcam import Target
from explain.labelstudio.results import Controls, prelabel_results
from explain.prelabel import Prelabeler, PrelabelSettings, prelabel_settings
from explain.regions import RegionSettings, Threshold
from models.spec import ModelSpec

INPUT = (32, 40)


@pytest.fixture(scope="module")
def brightness_model():
    """conv(1x1, weight 1) -> GAP -> dense [+1, -1]: Grad-CAM of class "bright" is the image itself."""
    inputs = keras.Input((*INPUT, 3))
    x = keras.layers.Conv2D(1, 1, activation="relu", name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2, activation="softmax", name="dense")(x)
    model = keras.Model(inputs, outputs)
    model.get_layer("conv").set_weights([np.full((1, 1, 3, 1), 1 / 3, np.float32), np.zeros(1, np.float32)])
    model.get_layer("dense").set_weights([np.array([[4.0, -4.0]], np.float32), np.zeros(2, np.float32)])
    spec = ModelSpec(input_size=INPUT, class_names=("bright", "dark"))
    return model, spec


def picture(height, width, boxes):
    """Black (H, W, 3) image with white rectangles (x, y, w, h) in pixels."""
    image = np.zeros((height, width, 3), np.float32)
    for x, y, w, h in boxes:
        image[y : y + h, x : x + w] = 1.0
    return image


def iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def test_regions_are_in_the_original_frame_of_images_of_any_size(brightness_model):
    model, spec = brightness_model
    settings = PrelabelSettings(regions=RegionSettings(Threshold("fraction", 0.5)))
    prelabeler = Prelabeler(model, spec, settings)
    cases = [(200, 300, [(40, 30, 90, 60)]), (600, 250, [(150, 400, 60, 120), (20, 50, 50, 50)])]
    images = [picture(h, w, boxes) for h, w, boxes in cases]
    for image, (height, width, boxes), prelabel in zip(images, cases, prelabeler(images)):
        assert (prelabel.width, prelabel.height) == (width, height)
        assert prelabel.predicted == "bright"
        (cls,) = prelabel.classes
        assert cls.class_name == "bright" and cls.heatmap.shape == INPUT
        assert len(cls.regions) == len(boxes)
        truth = picture(height, width, boxes)[..., 0] > 0
        union = np.zeros_like(truth)
        for region in cls.regions:
            assert region.mask.shape == (height, width)
            union |= region.mask
        assert iou(union, truth) > 0.8
        found = sorted(tuple(r.box) for r in cls.regions)
        for (x, y, w, h), (bx, by, bw, bh) in zip(sorted(boxes), found):
            tolerance = max(width, height) / min(INPUT)
            assert abs(bx - x) <= tolerance and abs(by - y) <= tolerance
            assert abs(bx + bw - x - w) <= tolerance and abs(by + bh - y - h) <= tolerance


def test_label_studio_results_match_the_regions(brightness_model):
    model, spec = brightness_model
    (prelabel,) = Prelabeler(model, spec)([picture(120, 200, [(20, 30, 60, 40)])])
    controls = Controls(rectangle="box", labels={"bright": "Opacity"})
    results = prelabel_results(prelabel, controls)
    by_type = {}
    for result in results:
        by_type.setdefault(result["type"], []).append(result)
    assert by_type["choices"][0]["value"]["choices"] == ["Opacity"]
    assert by_type["choices"][0]["score"] == pytest.approx(prelabel.probabilities["bright"])
    (region,) = prelabel.classes[0].regions
    (brush,) = by_type["brushlabels"]
    decoded = decode_rle(brush["value"]["rle"]).reshape(120, 200, 4)[:, :, 3]
    np.testing.assert_array_equal(decoded > 0, region.mask)
    assert brush["value"]["brushlabels"] == ["Opacity"] and brush["original_width"] == 200
    (polygon,) = by_type["polygonlabels"]
    points = np.array(polygon["value"]["points"])
    assert (points[:, 0].min(), points[:, 1].min()) == pytest.approx((region.box[0] / 2, region.box[1] / 1.2), abs=0.01)
    (box,) = by_type["rectanglelabels"]
    assert box["value"]["x"] == pytest.approx(region.box[0] / 2, abs=0.01)
    assert box["value"]["width"] == pytest.approx(region.box[2] / 2, abs=0.01)
    assert len({r["id"] for r in results}) == len(results)
    assert prelabel_results(prelabel, Controls(labels={"dark": "Clear"})) == []
    assert {r["type"] for r in prelabel_results(prelabel)} == {"choices", "brushlabels", "polygonlabels"}


def test_region_of_interest_restricts_the_regions(brightness_model):
    model, spec = brightness_model
    image = picture(100, 100, [(10, 10, 30, 30), (60, 60, 30, 30)])
    roi = np.zeros((100, 100), bool)
    roi[50:, 50:] = True
    (without,), (within,) = (Prelabeler(model, spec)([image], rois) for rois in (None, [roi]))
    assert len(without.classes[0].regions) == 2
    (region,) = within.classes[0].regions
    assert not region.mask[~roi].any() and region.box[0] >= 50


def test_targets_and_version_description(brightness_model):
    model, spec = brightness_model
    images = [picture(64, 64, [(0, 0, 20, 20)])]
    named = Prelabeler(model, spec, PrelabelSettings(target=Target.parse("dark")))(images)[0]
    assert [c.class_name for c in named.classes] == ["dark"]
    every = Prelabeler(model, spec, PrelabelSettings(target=Target.parse("above:0")))(images)[0]
    assert [c.class_name for c in every.classes] == ["bright", "dark"]
    settings = PrelabelSettings(method="guided", regions=RegionSettings(Threshold("otsu"), min_area=0.01))
    description = Prelabeler(model, spec, settings).description
    assert description == "guided@conv-logit-predicted-otsu-min0.01-fill-v64"
    assert Prelabeler(model, spec, PrelabelSettings(method="gradcam++")).description != description


def test_empty_batch_and_bad_roi_count(brightness_model):
    model, spec = brightness_model
    prelabeler = Prelabeler(model, spec)
    assert prelabeler([]) == []
    with pytest.raises(ValueError, match="rois must have one entry per image"):
        prelabeler([picture(10, 10, [])], rois=[None, None])


def test_service_reads_in_parallel_answers_in_order_and_isolates_failures(brightness_model):
    import threading
    import time
    from contextlib import nullcontext

    import cv2

    from explain.labelstudio.fetch import FetchError
    from explain.labelstudio.configs import plan_for
    from explain.service import PrelabelService

    model, spec = brightness_model
    threads = set()

    class Fetcher:
        def fetch(self, uri, task_id):
            threads.add(threading.get_ident())
            time.sleep(0.05)  # a network wait: the next reads start meanwhile
            if uri == "missing":
                raise FetchError("image_fetch", "image download answered HTTP 404")
            width = int(uri)
            return cv2.imencode(".png", (picture(50, width, [(5, 5, 20, 20)]) * 255).astype(np.uint8))[1].tobytes()

    config = ('<View><Image name="image" value="$image"/><BrushLabels name="mask" toName="image">'
              '<Label value="bright"/></BrushLabels></View>')
    stages = []

    def stage(name):
        stages.append(name)
        return nullcontext()

    service = PrelabelService(Prelabeler(model, spec), "w1", plan_for(config, spec.class_names), Fetcher(), stage=stage)
    widths = ["60", "missing", "70", "80", "90", "100"]
    outcomes = service([{"id": n, "data": {"image": w}} for n, w in enumerate(widths)])
    assert [o.task_id for o in outcomes] == list(range(6))
    assert outcomes[1].failure == ("image_fetch", "task 1: image download answered HTTP 404")
    assert outcomes[1].answer == {"result": [], "score": 0.0, "model_version": service.version}
    for outcome, width in zip(outcomes, widths):
        if width != "missing":
            assert outcome.prelabel.width == int(width) and outcome.answer["result"]
            assert outcome.answer["model_version"] == service.version == Prelabeler(model, spec).version("w1")
    assert len(threads) > 1  # the images were read on several threads
    assert {"fetch", "decode", "model", "regions", "results"} <= set(stages)


def square(side: int) -> np.ndarray:
    """A 64x64 black image with a white side x side square in its corner."""
    image = np.zeros((64, 64, 3), np.float32)
    image[:side, :side] = 1.0
    return image


def test_min_probability_gates_regions_per_image(brightness_model):
    model, spec = brightness_model
    faint, strong = square(24), square(48)  # mean brightness 0.14 / 0.56: p(bright) ~ 0.76 / 0.99
    settings = prelabel_settings(method="gradcam", min_probability=0.9)
    gated_faint, gated_strong = Prelabeler(model, spec, settings)([faint, strong])
    ungated_faint, _ = Prelabeler(model, spec, prelabel_settings(method="gradcam"))([faint, strong])
    assert 0.6 < gated_faint.probabilities["bright"] < 0.9 < gated_strong.probabilities["bright"]
    assert gated_faint.classes[0].class_name == "bright" and gated_faint.classes[0].regions == []
    assert gated_faint.classes[0].heatmap.max() > 0  # the map is still there, only no regions are drawn
    assert ungated_faint.classes[0].regions and gated_strong.classes[0].regions


def test_min_probability_names_the_version_and_is_checked(brightness_model):
    model, spec = brightness_model
    plain = Prelabeler(model, spec, prelabel_settings(method="gradcam")).description
    gated = Prelabeler(model, spec, prelabel_settings(method="gradcam", min_probability=0.5)).description
    assert gated == plain + "-p0.5"
    for bad in (-0.1, 1.0, True, "0.5"):
        with pytest.raises(ValueError, match="min_probability must be a probability"):
            PrelabelSettings(min_probability=bad)


def test_service_steps_run_apart_give_what_label_gives(brightness_model):
    """``labeler prelabel`` runs inputs / infer / describe on three threads: their composition is
    ``label``, and a wrong number of input rows is refused."""
    import cv2

    from explain.labelstudio.configs import plan_for
    from explain.service import PrelabelService

    model, spec = brightness_model

    class Fetcher:
        def fetch(self, uri, task_id):
            return cv2.imencode(".png", (picture(50, int(uri), [(5, 5, 20, 20)]) * 255).astype(np.uint8))[1].tobytes()

    config = ('<View><Image name="image" value="$image"/><BrushLabels name="mask" toName="image">'
              '<Label value="bright"/></BrushLabels></View>')
    service = PrelabelService(Prelabeler(model, spec), "w1", plan_for(config, spec.class_names), Fetcher())
    tasks = [{"id": n, "data": {"image": w}} for n, w in enumerate(["60", "70", "80"])]
    whole = service.label(service.read(tasks))
    read = service.read(tasks)
    inputs = service.inputs(read)
    assert inputs.shape == (3, *INPUT, 3)
    apart = service.describe(read, service.infer(read, inputs))
    def without_ids(answer):  # region ids are new random ones on every call
        return {**answer, "result": [{k: v for k, v in r.items() if k != "id"} for r in answer["result"]]}

    assert [without_ids(o.answer) for o in apart] == [without_ids(o.answer) for o in whole]
    assert all(o.answer["result"] for o in apart)
    assert all(o.image is None for o in apart)  # the decoded images are released
    with pytest.raises(ValueError, match="one row per image"):
        service.infer(service.read(tasks), inputs[:2])
