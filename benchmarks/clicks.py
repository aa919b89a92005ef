"""Click to segment, measured in clicks: a simulated annotator on real and bench lesions (issue 15).

Data: (a) the REAL radiologist lesion masks of ``../shared/data/cxr`` with prelabel_quality's
patient-level val / test halves, its cached real classifier and lung ROI model; (b) the lesion
bench at strength 5 (cam_quality's val split and test split, every ``BENCH_EVERY``-th lesion
image), cam_quality's cached classifier and prelabel_quality's bench lung ROI model. Only images
with a lesion are clicked on (a clear image needs no click).

Evidence per image, as the backend builds it for a click: ``Prelabeler.click_evidence`` with the
classes ``click_targets`` wants for the interactive config ``labeler init`` writes (the lesion
classes): the most probable lesion class's layercam map (computed when the prediction was a negative
class) resized to the image, and the lung ROI model's region of interest (``explain.anatomy.roi_mask``
with ``PriorSettings()``). No segmenter map: see ``report``.

The annotator: each click at the centre (the pixel farthest from its border, cv2.distanceTransform)
of the largest connected error region of the current answer (the first: of the truth), positive in a
miss, negative in a false area; up to ``MAX_CLICKS``. Reported per method and data set: mean Dice
after 1, 3, 5 clicks, NoC@0.80 and NoC@0.85 (``MAX_CLICKS`` when never reached), beside drawing from
scratch (edit fraction 1 by definition; its mean pixel count) and correcting the one-shot default
pre-label (its Dice and ``models.agreement.edit_fraction``). The default methods, without and with a
click model (``explain.clicks.NEEDS_CLICKER``), are the ones with the lowest real VALIDATION NoC@0.85
(tie: Dice@3) on each side; test never chooses. Latency: 1024 x 1024.

By masks (``--only masks``, also in a full run; its own section): the real TEST split's clicks
with click models trained on seeded subsets of the val lesion masks (``BY_MASKS``, each size on
``BY_MASKS_SEEDS`` subsets, averaged) and on all of them, beside no click model at all, and, the
curve's last point, each test image answered by a click model trained on the val masks plus those of
the other test folds (patient-level: never its own patient): how the clicks fall as a team corrects
more masks (what the backend's training jobs feed the click model).

    python benchmarks/clicks.py --out BENCHMARKS.md [--quick] [--only real|bench|masks]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["CUDA_VISIBLE_DEVICES"] = ""

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import cam_quality  # noqa: E402  benchmarks/cam_quality.py
import prelabel_quality  # noqa: E402  benchmarks/prelabel_quality.py
from results import hardware, load_average, write_section  # noqa: E402

MARKERS = ("<!-- clicks:start -->", "<!-- clicks:end -->")
MASKS_MARKERS = ("<!-- clicks-by-masks:start -->", "<!-- clicks-by-masks:end -->")
BY_MASKS = (8, 16)  # val lesion masks a click model learns from, besides all of them
BY_MASKS_SEEDS = (0, 1)
MAX_CLICKS = 20
GOALS = (0.80, 0.85)
AT = (1, 3, 5)
BENCH_EVERY = 2
LATENCY_IMAGES, LATENCY_CLICKS, LATENCY_SIZE = 4, 10, 1024


# ---------------------------------------------------------------- the annotator


def next_click(pred: np.ndarray, truth: np.ndarray):
    """The next simulated click, ``explain.clicks.Click`` at the centre of the largest connected
    error region of ``pred`` (positive in a miss, negative in a false area; ``models.clicking.error_click``,
    the annotator the click model is trained with); None without error."""
    from explain.clicks import Click
    from models.clicking import error_click

    point = error_click(pred, truth)
    if point is None:
        return None
    return Click.at_pixel(*point)


def simulate(evidence, truth: np.ndarray, method: str, max_clicks: int = MAX_CLICKS) -> list[float]:
    """Dice after each click of ``models.clicking.click_curve``'s annotator (stops once past
    ``max(AT)`` clicks with the last goal reached; the rest is that Dice's plateau, which NoC and
    Dice@k do not read)."""
    from explain.clicks import Click, segment
    from models.clicking import click_curve

    def answer(points):
        return segment(evidence, [Click.at_pixel(*point) for point in points], method=method)

    return click_curve(answer, truth, max_clicks, done=lambda scores: len(scores) >= max(AT) and scores[-1] >= max(GOALS))


def noc(scores: list[float], goal: float) -> int:
    return next((k + 1 for k, s in enumerate(scores) if s >= goal), len(scores))


# ---------------------------------------------------------------- evidence


def wanted_classes(class_names) -> tuple[str, ...] | None:
    """The classes whose map a click follows in the backend: ``click_targets`` of the interactive
    config ``labeler init`` writes (one lesion brush label) for an unlabelled click."""
    from explain.labelstudio.configs import click_targets, labeling_config, plan_for

    config = labeling_config(class_names, interactive=True)
    return click_targets(config, plan_for(config, class_names)).wanted(None)


def evidence_of(model_path: Path, roi_path: Path, items: list[dict]) -> list[dict]:
    """Per lesion item: {"evidence", "truth", "prelabel" (the default one-shot mask), "image",
    "heat" (the low-resolution map the evidence follows), "roi_map"}."""
    from explain.anatomy import PriorSettings
    from explain.prelabel import Prelabeler, prelabel_settings
    from models.loading import load_classifier, load_segmenter
    from models.segmentation import Segmenter

    loaded = load_classifier(model_path)
    prelabeler = Prelabeler(loaded.model, loaded.spec, prelabel_settings(), roi_model=Segmenter(load_segmenter(roi_path)),
                            prior=PriorSettings())
    items = [it for it in items if it["label"] == "opacity"]
    images = cam_quality.load_images([it["image"] for it in items])
    outputs = prelabeler.explain(images)
    prelabels = prelabeler.regions(images, outputs)
    masks = cam_quality.masks_of(prelabels)
    wanted = wanted_classes(loaded.spec.class_names)
    out = []
    for image, output, mask, it in zip(images, outputs, masks, items):
        _, evidence = prelabeler.click_evidence(np.asarray(image, np.float32), output, wanted)
        heat = cv2.resize(evidence.heat, (output.roi_map.shape[1], output.roi_map.shape[0]), interpolation=cv2.INTER_AREA)
        out.append({"evidence": evidence, "truth": it["truth"], "prelabel": mask, "image": image,
                    "heat": heat, "roi_map": output.roi_map, "item": it})
    return out


# ---------------------------------------------------------------- the click model (a learnt candidate)

CLICK_FOLDS = 3  # val: each case answered by a click model trained on the other folds' patients
CLICK_STEPS = 600  # training steps of batch 8 per click model (epochs = CLICK_STEPS / steps per epoch)
CLICK_SIZE = 128


def click_model(cases: list[dict], name: str, seed: int, steps: int = CLICK_STEPS) -> dict:
    """A click model trained by ``labeler train-segmenter --clicks`` on the cases' images and truths
    (a pairs folder of links and written masks), cached by the cases' ids: {"path", "command", "masks"}."""
    import hashlib

    from models.clicking import CHAIN

    ids = sorted(str(c["item"]["id"]) for c in cases)
    key = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:10]
    epochs = -(-steps // -(-len(cases) // 8))
    out = prelabel_quality.CACHE / "clickers" / f"{name}-{key}-{epochs}ep-chain{CHAIN}-seed{seed}.keras"
    pairs = out.with_suffix(".pairs")
    command = [str(cam_quality.LABELER), "train-segmenter", str(pairs), "--out", str(out), "--clicks", "--label", "lesion",
               "--size", str(CLICK_SIZE), "--epochs", str(epochs), "--val-fraction", "0", "--seed", str(seed)]
    shown = f"labeler train-segmenter PAIRS --out M.keras --clicks --label lesion --size {CLICK_SIZE} --epochs {epochs} --val-fraction 0 --seed {seed}"
    if not out.is_file():
        for case in cases:
            stem = str(case["item"]["id"])
            (pairs / "images").mkdir(parents=True, exist_ok=True)
            (pairs / "masks").mkdir(parents=True, exist_ok=True)
            link = pairs / "images" / f"{stem}{Path(case['item']['image']).suffix}"
            if not link.exists():
                link.symlink_to(Path(case["item"]["image"]).resolve())
            cv2.imwrite(str(pairs / "masks" / f"{stem}.png"), np.uint8(case["truth"]) * 255)
        print("$", " ".join(command), file=sys.stderr, flush=True)
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return {"path": out, "command": shown, "masks": len(cases)}


def with_click_models(cases: dict[str, list[dict]], name: str, seed: int, steps: int = CLICK_STEPS) -> dict[str, str]:
    """Replace each split's cases by copies bound to a click model (``Evidence.clicker``), never one trained
    on its own patient: val cases get the model of the other val folds (patient-level, seeded), test cases the model
    trained on all val cases. Returns how they were trained."""
    by_patient = cross_fitted(cases["val"], f"{name}-val", seed, steps)
    cases["val"] = bind(cases["val"], lambda case: by_patient[str(case["item"]["patient"])])
    model = click_model(cases["val"], f"{name}-val", seed, steps)
    cases["test"] = bind(cases["test"], lambda case: model)
    return {"command": model["command"], "folds": CLICK_FOLDS}


def cross_fitted(cases: list[dict], name: str, seed: int, steps: int, also: Sequence[dict] = ()) -> dict[str, dict]:
    """Per patient of ``cases``: the click model (``click_model``) trained on ``also`` and the cases of
    the other ``patient_folds``, never on the patient's own."""
    out = {}
    for k, fold in enumerate(patient_folds(cases, seed)):
        model = click_model([*also, *(c for c in cases if str(c["item"]["patient"]) not in fold)], f"{name}-fold{k}", seed, steps)
        out.update({patient: model for patient in fold})
    return out


def bind(cases: list[dict], model_of: Callable[[dict], dict]) -> list[dict]:
    """Copies of ``cases`` whose evidence is bound to the click model ``model_of(case)`` (each loaded once)."""
    import dataclasses

    from models.clicking import Clicker
    from models.loading import load_model

    loaded: dict[Path, Clicker] = {}
    out = []
    for case in cases:
        path = model_of(case)["path"]
        if path not in loaded:
            loaded[path] = Clicker(load_model(path, kind="clicker"))
        out.append({**case, "evidence": dataclasses.replace(case["evidence"], clicker=loaded[path].on(case["evidence"].gray))})
    return out


def patient_folds(cases: list[dict], seed: int) -> list[set[str]]:
    """The cases' patients in ``CLICK_FOLDS`` seeded folds (sets of patient keys)."""
    patients = sorted({str(c["item"]["patient"]) for c in cases})
    order = list(np.random.default_rng(seed).permutation(patients))
    return [set(order[i::CLICK_FOLDS]) for i in range(CLICK_FOLDS)]


def run_split(cases: list[dict], methods) -> dict:
    from models.agreement import dice, edit_fraction

    result = {"n": len(cases), "pixels": float(np.mean([c["truth"].sum() for c in cases])),
              "prelabel_dice": float(np.mean([dice(c["prelabel"], c["truth"]) if c["prelabel"].any() else 0.0 for c in cases])),
              "prelabel_edit": float(np.mean([edit_fraction(c["prelabel"], c["truth"]) for c in cases])), "methods": {}}
    for method in methods:
        started = time.perf_counter()
        curves = [simulate(c["evidence"], c["truth"], method) for c in cases]
        result["methods"][method] = {
            **{f"dice@{k}": float(np.mean([s[k - 1] for s in curves])) for k in AT},
            **{f"noc@{g:.2f}": float(np.mean([noc(s, g) for s in curves])) for g in GOALS},
            "reached": float(np.mean([noc(s, max(GOALS)) < MAX_CLICKS or s[-1] >= max(GOALS) for s in curves])),
            "seconds": time.perf_counter() - started}
        print(f"  {method}: {result['methods'][method]}", file=sys.stderr, flush=True)
    return result


def by_masks(cases: dict[str, list[dict]], seed: int, steps: int = CLICK_STEPS) -> list[dict]:
    """Per number of lesion masks learnt from (0: no click model, ``BY_MASKS``, all val, all val plus
    the other test folds'): the test split's ``run_split`` of guided_walker and click_model
    (chained_walker without a click model) with click models trained on seeded subsets of that many
    val cases, averaged over the subsets; in the last rows each test fold has its own click model
    (``patient_folds``) and ``masks`` is their mean number of masks."""
    import dataclasses

    val, test = cases["val"], cases["test"]
    plain = [{**c, "evidence": dataclasses.replace(c["evidence"], clicker=None)} for c in test]
    rows = [{"masks": 0, "subsets": 1, "methods": run_split(plain, ("chained_walker",))["methods"]}]
    for n in (*[n for n in BY_MASKS if n < len(val)], len(val)):
        runs = []
        for subset_seed in BY_MASKS_SEEDS if n < len(val) else (None,):
            if subset_seed is None:
                model = click_model(val, "real-val", seed, steps)  # with_click_models' test model
            else:
                subset = [val[i] for i in np.random.default_rng(subset_seed).permutation(len(val))[:n]]
                model = click_model(subset, f"real-val-n{n}-s{subset_seed}", seed, steps)
            runs.append(run_split(bind(test, lambda case: model), ("guided_walker", "click_model"))["methods"])
        rows.append({"masks": n, "subsets": len(runs), "methods": {
            method: {key: float(np.mean([r[method][key] for r in runs])) for key in runs[0][method]} for method in runs[0]}})
    by_patient = cross_fitted(test, "real-valtest", seed, steps, also=val)
    learnt = [m["masks"] for m in {str(m["path"]): m for m in by_patient.values()}.values()]
    bound = bind(test, lambda case: by_patient[str(case["item"]["patient"])])
    rows.append({"masks": round(float(np.mean(learnt))), "subsets": len(learnt), "other_test_folds": True,
                 "methods": run_split(bound, ("guided_walker", "click_model"))["methods"]})
    return rows


def by_masks_report(rows: list[dict], args, seconds: float, command: str) -> str:
    machine = hardware()
    lines = [
        MASKS_MARKERS[0],
        f"### Click to segment: clicks against the corrected masks the click model learnt from{' (quick)' if args.quick else ''}",
        "",
        f"{datetime.date.today().isoformat()}; {machine['cpu']}, {machine['cores']} cores, CPU only. Command: "
        f"`python benchmarks/clicks.py --out {args.out} --only masks{' --quick' * args.quick}` (also part of a full run), "
        f"{seconds / 60:.1f} min for this table (click models trained once are cached in `.cache`). "
        f"The real lesion masks' TEST split, the annotator and evidence of the section above; click models trained as "
        f"`{command}` ({CLICK_STEPS} steps: the epochs follow the number of masks) on seeded subsets of the VAL "
        f"lesion masks (subset seeds {', '.join(map(str, BY_MASKS_SEEDS))}, averaged) and on all of them (the test "
        "model above); 0 masks: no click model (`chained_walker`); the last rows: the test patients in "
        f"{CLICK_FOLDS} seeded folds, each fold's images answered by a click model trained on all val masks and "
        "those of the other test folds (never its own patient; the mean number of masks shown). A backend "
        "training job promotes a click model only when its simulated clicks on the project's held-out tasks beat the "
        "current answer's, which is what keeps a click model trained on too few masks out.",
        "",
        "| masks learnt from | method | Dice@1 | Dice@3 | Dice@5 | NoC@0.80 | NoC@0.85 | reached 0.85 |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        for method, m in row["methods"].items():
            learnt = f"{row['masks']} (val + other test folds)" if row.get("other_test_folds") else row["masks"]
            lines.append(f"| {learnt} | {method} | {m['dice@1']:.3f} | {m['dice@3']:.3f} | {m['dice@5']:.3f} | "
                         f"{m['noc@0.80']:.2f} | {m['noc@0.85']:.2f} | {m['reached']:.2f} |")
    lines += ["", MASKS_MARKERS[1]]
    return "\n".join(lines)


# ---------------------------------------------------------------- latency


def latency(cases: list[dict], methods) -> dict:
    """ms at LATENCY_SIZE x LATENCY_SIZE (images, truths and ROI maps upsampled): "first" = the
    Evidence built from the low-resolution map and the ROI model's map (Evidence.of, roi_mask) plus
    the first click's answer; "clicks" = every later answer (p50 / p95) on that cached Evidence,
    clicks placed by the simulated annotator. Each answer includes what the backend then sends
    (``mask_results``: the brush RLE and the polygons, as JSON). The models' forward passes (once
    per image, cached by the backend) and the HTTP round trip are not included."""
    import dataclasses

    from explain.anatomy import PriorSettings, roi_mask
    from explain.clicks import Evidence, segment
    from explain.labelstudio.results import mask_results

    def answer(evidence, clicks, method):
        mask = segment(evidence, clicks, method=method)
        json.dumps(mask_results(mask, "Opacity", "image", "mask", "outline", 1.0))
        return mask

    size = LATENCY_SIZE
    out = {}
    for method in methods:
        first, later = [], []
        for c in cases:
            image = cv2.resize(c["image"], (size, size), interpolation=cv2.INTER_CUBIC).clip(0, 1)
            truth = cv2.resize(c["truth"].astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0
            started = time.perf_counter()
            evidence = Evidence.of(image, c["heat"], roi_mask(c["roi_map"], size, size, PriorSettings()))
            if c["evidence"].clicker is not None:  # the click model bound to this image, as the backend binds it
                evidence = dataclasses.replace(evidence, clicker=c["evidence"].clicker.clicker.on(evidence.gray))
            clicks = [next_click(np.zeros_like(truth), truth)]
            pred = answer(evidence, clicks, method)
            first.append(time.perf_counter() - started)
            for _ in range(LATENCY_CLICKS - 1):
                click = next_click(pred, truth)
                if click is None:
                    break
                clicks.append(click)
                started = time.perf_counter()
                pred = answer(evidence, clicks, method)
                later.append(time.perf_counter() - started)
        out[method] = {"first_p50": 1000 * float(np.median(first)), "first_max": 1000 * float(np.max(first)),
                       "p50": 1000 * float(np.percentile(later, 50)), "p95": 1000 * float(np.percentile(later, 95)),
                       "n": len(later)}
    return out


# ---------------------------------------------------------------- report


def choose(result: dict, clicker: bool = False) -> str | None:
    """Lowest NoC@0.85, tie (to 2 decimals): the higher Dice@3; among the methods that need a click
    model (``clicker``) or among the others (None when there is none)."""
    from explain.clicks import NEEDS_CLICKER

    scores = {m: r for m, r in result["methods"].items() if (m in NEEDS_CLICKER) == clicker}
    return min(scores, key=lambda m: (round(scores[m]["noc@0.85"], 2), -scores[m]["dice@3"])) if scores else None


def report(runs: dict, timings: dict, args, seconds: float, chosen: tuple[str | None, str | None]) -> str:
    from explain.clicks import CLICKER_DEFAULT_METHOD, DEFAULT_METHOD, WORK

    machine = hardware()
    command = f"python benchmarks/clicks.py --out {args.out}" + " --quick" * args.quick
    lines = [
        MARKERS[0],
        f"## Click to segment: a simulated annotator (issue 15){' (quick)' if args.quick else ''}",
        "",
        f"{datetime.date.today().isoformat()}; {machine['cpu']}, {machine['cores']} cores, {machine['ram_gib']:.0f} GiB, CPU only, "
        f"load average {load_average()} at the end. Command: `{command}`, {seconds / 60:.1f} min in all.",
        "",
        "Evidence per image, as the backend builds it for a click (`Prelabeler.click_evidence` with the classes "
        "`click_targets` wants for `labeler init`'s interactive config: the lesion classes): the most probable lesion "
        "class's `layercam` map (computed when a negative class was predicted) resized to the image, and the lung ROI "
        "model's region of interest "
        "(`explain.anatomy.roi_mask`, `PriorSettings()`; prelabel_quality's cached lung models, trained on the train "
        "patients' lung masks). No segmenter map: the cached U-Nets of `.cache/segmenter-loop` were trained on "
        "segmenter_loop's own splits, whose training patients are not kept apart from these val / test patients, so "
        "their maps would leak the test lesions. Annotator: each click at the centre (farthest from its border, "
        "`cv2.distanceTransform`) of the largest connected error region of the current answer, positive in a miss, "
        f"negative in a false area, up to {MAX_CLICKS} clicks, every answer from all the clicks so far "
        "(`explain.clicks.segment`); only images with a lesion. NoC@t: clicks until Dice >= t "
        f"({MAX_CLICKS} when never), mean over images; *reached*: the share of images that reach 0.85. "
        "Baselines: *brush* = drawing from scratch (edit fraction 1 by definition; the mean lesion size in pixels "
        "is what is painted); *one-shot pre-label* = correcting today's default pre-label (`CAM_SHAPE=grabcut`, "
        "`fraction:0.2`, the ROI model; empty when a negative class is predicted) with the brush: its Dice and edit "
        "fraction ((FP + FN) / truth pixels). Working sizes: " + ", ".join(f"{k} {v} px" for k, v in WORK.items())
        + "; `threshold` works at the image's size.",
        "",
        f"**Default**: `{chosen[0]}` without a click model, the lowest NoC@0.85 (tie: Dice@3) on the REAL VALIDATION "
        f"split (`explain.clicks.DEFAULT_METHOD` is `{DEFAULT_METHOD}`); with one (`CLICK_MODEL`), `{chosen[1]}`, the "
        f"lowest of the methods that use it (`explain.clicks.CLICKER_DEFAULT_METHOD`, the backend's default when "
        f"`CLICK_MODEL` is set, is `{CLICKER_DEFAULT_METHOD}`). Test never chooses.",
        "",
    ]
    head = "| method | Dice@1 | Dice@3 | Dice@5 | NoC@0.80 | NoC@0.85 | reached 0.85 |"
    for key, run in runs.items():
        lines += [f"### {run['title']}", "", run["note"], ""]
        if "clicker" in run:
            lines += [f"*click_model*: a click-conditioned U-Net (`models.clicking`, the image and the clicks, no map) "
                      f"trained by `{run['clicker']['command']}` on the VAL lesion masks, as the annotator above clicks "
                      f"(its own previous answers in the loop). Val: each image answered by a model trained on the other "
                      f"{run['clicker']['folds'] - 1} of {run['clicker']['folds']} val folds (patient-level, seeded: "
                      "cross-validation, never its own patient); test: the model trained on all val images. "
                      "*guided_walker*: `chained_walker` with that click model's answer to the clicks so far as its map "
                      "(in place of the class map).", ""]
        for split in ("val", "test"):
            r = run[split]
            lines += [f"{split.capitalize()} ({r['n']} lesion images, mean lesion {r['pixels']:.0f} px):", "", head,
                      "|---|---:|---:|---:|---:|---:|---:|"]
            for method, m in r["methods"].items():
                b = "**" if method in chosen else ""
                lines.append(f"| {b}{method}{b} | {m['dice@1']:.3f} | {m['dice@3']:.3f} | {m['dice@5']:.3f} | "
                             f"{m['noc@0.80']:.2f} | {m['noc@0.85']:.2f} | {m['reached']:.2f} |")
            lines += ["", f"| baseline | Dice | edit fraction | pixels to paint |", "|---|---:|---:|---:|",
                      f"| brush from scratch | – | 1.000 | {r['pixels']:.0f} |",
                      f"| correct the one-shot pre-label | {r['prelabel_dice']:.3f} | {r['prelabel_edit']:.3f} | "
                      f"{r['prelabel_edit'] * r['pixels']:.0f} (mean edit x mean size) |", ""]
    lines += [f"### Latency at {LATENCY_SIZE} x {LATENCY_SIZE}", "",
              f"{LATENCY_IMAGES if not args.quick else 2} real val radiographs upsampled to {LATENCY_SIZE} x {LATENCY_SIZE}, "
              f"up to {LATENCY_CLICKS} simulated clicks each. *First answer*: `Evidence.of` (the low-resolution map "
              "resized, the ROI model's map cut by `roi_mask`) plus the first click's answer (builds the working-size "
              "cache). *Per click*: each later answer on the cached Evidence (all clicks so far). Every answer "
              "includes what the backend sends for it (`mask_results`: the brush RLE and the polygons, as JSON). "
              "Not included: the classifier's and the ROI model's forward passes (once per image, the backend "
              "caches them) and the HTTP round trip through Label Studio.", "",
              "| method | first answer p50 ms | first answer max ms | per click p50 ms | per click p95 ms | clicks timed |",
              "|---|---:|---:|---:|---:|---:|"]
    for method, t in timings.items():
        lines.append(f"| {method} | {t['first_p50']:.0f} | {t['first_max']:.0f} | {t['p50']:.0f} | {t['p95']:.0f} | {t['n']} |")
    lines += ["", MARKERS[1]]
    return "\n".join(lines)


def main(argv=None) -> None:
    from explain.clicks import METHODS, NEEDS_CLICKER

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="markdown file to write the section into")
    parser.add_argument("--quick", action="store_true", help="a few images per split, for development")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods (default: all)")
    parser.add_argument("--only", choices=("real", "bench", "masks"), help="one data set, or the clicks by masks learnt from")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    started = time.perf_counter()
    thin = (lambda items: items[::4]) if args.quick else (lambda items: items)
    runs, timings = {}, {}
    if args.only in (None, "real", "masks"):
        splits, train = prelabel_quality.real_items(args.seed)
        model = prelabel_quality.real_classifier(train, 40, args.seed)
        roi = prelabel_quality.lung_roi_model("real", seed=args.seed)
        run = {"title": "(a) real radiologist lesion masks (../shared/data/cxr), patient-level val / test halves",
               "note": f"prelabel_quality's split and models: classifier `{model['command']}` on {len(train)} images of "
                       "the other patients; lung ROI model `" + roi["command"] + "`."}
        cases = {}
        for split, items in splits.items():
            cases[split] = evidence_of(model["path"], roi["path"], thin(items))
            print(f"[real {split}] {len(cases[split])} images, {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        steps = CLICK_STEPS // 10 if args.quick else CLICK_STEPS
        if args.only == "masks" or (args.only is None and NEEDS_CLICKER & set(methods)):
            masks_started = time.perf_counter()
            rows = by_masks(cases, args.seed, steps)
            command = click_model(cases["val"], "real-val", args.seed, steps)["command"]
            text = by_masks_report(rows, args, time.perf_counter() - masks_started, command)
            print(text)
            write_section(args.out, *MASKS_MARKERS, text)
            if args.only == "masks":
                return
        if NEEDS_CLICKER & set(methods):
            run["clicker"] = with_click_models(cases, "real", args.seed, steps)
        for split in splits:
            run[split] = run_split(cases[split], methods)
        runs["real"] = run
        timings = latency(cases["val"][: 2 if args.quick else LATENCY_IMAGES], methods)
        print(f"[latency] {timings}", file=sys.stderr, flush=True)
    if args.only in (None, "bench"):
        trained = cam_quality.classifier(5.0)
        roi = prelabel_quality.lung_roi_model("bench", 5.0, seed=args.seed)
        every = 8 if args.quick else BENCH_EVERY
        run = {"title": f"(b) lesion bench, strength 5 (cam_quality's val and test splits, every {'second' if every == 2 else f'{every}th'} lesion image)",
               "note": f"cam_quality's classifier `{trained['command']}`; prelabel_quality's bench lung ROI model."}
        cases_b = {}
        for split, items in prelabel_quality.bench_items(5.0, args.seed).items():
            lesions = [it for it in items if it["label"] == "opacity"][::every]
            cases_b[split] = evidence_of(trained["path"], roi["path"], lesions)
            print(f"[bench {split}] {len(cases_b[split])} images, {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        if NEEDS_CLICKER & set(methods):
            run["clicker"] = with_click_models(cases_b, "bench5", args.seed, CLICK_STEPS // 10 if args.quick else CLICK_STEPS)
        for split in cases_b:
            run[split] = run_split(cases_b[split], methods)
        runs["bench5"] = run
    chosen = (choose(runs["real"]["val"]), choose(runs["real"]["val"], clicker=True)) if "real" in runs else ("–", "–")
    text = report(runs, timings, args, time.perf_counter() - started, chosen)
    print(text)
    write_section(args.out, *MARKERS, text)


if __name__ == "__main__":
    main()
