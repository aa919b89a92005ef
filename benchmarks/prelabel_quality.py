"""Which pre-labels are worth keeping: shape x lung ROI model x threshold x gating, on real and bench lesions.

Scored on two kinds of truth:

(a) the REAL radiologist lesion masks of ``../shared/data/cxr`` (``lesions/<id>__<class>.png``
    merged into one mask; the normals with a lung mask count as images with an empty truth). The
    images with a lesion mask or a normal label and a lung mask are split by ``patient_key`` (seeded)
    into val and test halves; the classifier (covid / normal / pneumonia, ``labeler
    train-classifier``, cached) learns on the images of every OTHER patient;
(b) the lesion benchmark (``cam_quality.build_bench`` at strength 1 and 5: real radiographs with
    synthetic opacities and exact masks), cam_quality's patient-level val split and its test
    split, with cam_quality's cached classifier for that strength.

For every image the classifier's Grad-CAM maps (layercam, ``CAM_TARGET=predicted``, as the
backend) and the lung ROI model's map are computed once; then every shape (``SHAPES``) x region of interest x threshold x ``min_probability`` is run
through the backend's own post-processing (``Prelabeler.regions``), and the image's mask is what the
backend outlines (nothing when a negative class is predicted). Regions of interest: "none"; "roi
model", a lung segmenter trained by ``labeler train-segmenter`` on the TRAIN patients' lung masks
(``lung_roi_model``), held by the Prelabeler with ``PriorSettings()`` exactly as the backend holds
``ROI_MODEL_PATH``; "lungs+3%", the true lungs dilated, a reference no product has. The gate
(``PrelabelSettings.min_probability``) is applied post hoc from the class probability and checked
equal to the backend's own gating. Baselines: the true lung mask ("whole lung") and "empty".

Columns: Dice (mean over lesion images, an empty prediction scores 0); edit fraction (mean over
lesion images of (FP + FN) / truth pixels, ``models.agreement.edit_fraction``); fp (mean fraction
of the image pre-labelled on normal / clear images); fp/lung (the same relative to the image's lung
area). The product default is the setting a product can run (ROI none or roi model) with the lowest
edit fraction (tie: Dice) on the strength-5 bench's VALIDATION split, shown on val and test of every
data set; each data set's own best on its validation split is reported beside it. The shape step is
also timed at 1024 x 1024.

    python benchmarks/prelabel_quality.py --out /work/notes/q-bench.md [--quick] [--only real]

Cached under ``.cache/prelabel-quality/`` (the real classifier and the lung ROI models; the bench and
its classifiers under cam_quality's).
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["CUDA_VISIBLE_DEVICES"] = ""

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import cam_quality  # noqa: E402  benchmarks/cam_quality.py
from results import hardware, load_average, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "prelabel-quality"
CXR = ROOT.parent / "shared" / "data" / "cxr"
MARKERS = ("<!-- prelabel-quality:start -->", "<!-- prelabel-quality:end -->")
SHAPES = ("map", "intensity", "random_walker", "watershed", "grabcut", "slic")  # every explain.shapes method (the run fits)
THRESHOLDS = ("fraction:0.2", "fraction:0.3", "fraction:0.4")
MAP_THRESHOLDS = THRESHOLDS + ("fraction:0.6",)  # the map alone is cheap and wants tighter cuts
QUICK_THRESHOLDS = ("fraction:0.3",)
GATES = (0.0, 0.6, 0.8, 0.9)  # PrelabelSettings.min_probability values
STRENGTHS = (5.0, 1.0)
REAL_CLASSES = ("covid", "normal", "pneumonia")
BENCH_EVERY = 2  # every second bench image (in split order) is scored


def dilated_lungs(image: np.ndarray, lungs: np.ndarray) -> np.ndarray:
    """The true lung mask grown by 3 % of the image's longest side: (H, W) bool."""
    r = max(1, round(0.03 * max(lungs.shape)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    return cv2.dilate(lungs.astype(np.uint8), kernel) > 0


# ROI sources: none; the lung ROI model (``lung_roi_model``, through the Prelabeler as the backend);
# the dilated TRUE lungs (a reference no product has).
ROI_NAMES = ("none", "roi model", "lungs+3%")


# ---------------------------------------------------------------- data


def _mask(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) > 127


def real_items(seed: int = 0) -> tuple[dict[str, list[dict]], list[dict]]:
    """({"val": items, "test": items}, classifier rows): items are dicts with image (path), truth
    and lungs ((H, W) bool), label ("opacity" / "clear"), patient; the classifier rows are the
    manifest rows (covid / normal / pneumonia) of every patient outside val and test."""
    if not (CXR / "manifest.csv").is_file():
        raise SystemExit(f"error: the research data is missing: {CXR}/manifest.csv does not exist")
    manifest = [r for r in csv.DictReader(open(CXR / "manifest.csv")) if r["file"].startswith("images/")]
    lesions: dict[str, np.ndarray] = {}
    for r in csv.DictReader(open(CXR / "lesions" / "annotations.csv")):
        if r["kind"] == "mask" and r["file"].startswith("lesions/"):
            m = _mask(CXR / r["file"])
            lesions[r["id"]] = lesions[r["id"]] | m if r["id"] in lesions else m
    scored = [r for r in manifest if r["lung_mask_file"] and (r["id"] in lesions or r["label"] == "normal")]
    patients = sorted({r["patient_key"] for r in scored})
    order = list(np.random.default_rng(seed).permutation(patients))
    val_patients = set(order[: len(order) // 2])
    splits: dict[str, list[dict]] = {"val": [], "test": []}
    for r in scored:
        lungs = _mask(CXR / r["lung_mask_file"])
        truth = lesions.get(r["id"], np.zeros_like(lungs))
        splits["val" if r["patient_key"] in val_patients else "test"].append(
            {"id": r["id"], "image": CXR / r["file"], "truth": truth, "lungs": lungs, "patient": r["patient_key"],
             "label": "opacity" if r["id"] in lesions else "clear"})
    held = {r["patient_key"] for r in scored}
    train = [r for r in manifest if r["patient_key"] not in held and r["label"] in REAL_CLASSES]
    return splits, train


def real_classifier(rows: list[dict], epochs: int, seed: int = 0) -> dict:
    """A small CNN (covid / normal / pneumonia) trained by ``labeler train-classifier`` on
    ``rows`` (class folders of symlinks), cached: {"path", "seconds", "command", "cached"}."""
    out = CACHE / f"real-classifier-{epochs}ep-seed{seed}-{len(rows)}img.keras"
    seconds = out.with_suffix(".seconds")
    command = [str(cam_quality.LABELER), "train-classifier", str(out.with_suffix(".data")), "--out", str(out),
               *cam_quality.TRAIN_OPTIONS, "--size", "128", "--epochs", str(epochs), "--seed", str(seed)]
    shown = "labeler train-classifier DIR --out MODEL " + " ".join(command[5:])
    if out.is_file() and seconds.is_file():
        return {"path": out, "seconds": float(seconds.read_text()), "command": shown, "cached": True}
    for r in rows:
        link = out.with_suffix(".data") / r["label"] / Path(r["file"]).name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to((CXR / r["file"]).resolve())
    print("$", " ".join(command), file=sys.stderr)
    started = time.perf_counter()
    subprocess.run(command, check=True)
    seconds.write_text(f"{time.perf_counter() - started:.1f}\n")
    return {"path": out, "seconds": float(seconds.read_text()), "command": shown, "cached": False}


def bench_items(strength: float, seed: int = 0) -> dict[str, list[dict]]:
    """The lesion benchmark's val (cam_quality.val_split) and test split as items."""
    bench = cam_quality.build_bench(strength)
    rows = cam_quality.bench_rows(bench)
    _, val = cam_quality.val_split(rows, 0.2, seed)
    test = [r for r in rows if r["split"] == "test"]
    item = lambda r: {"id": r["id"], "image": cam_quality.image_path(bench, r), "label": r["label"],  # noqa: E731
                      "truth": cam_quality.read_mask(cam_quality.image_path(bench, r, "masks")),
                      "lungs": cam_quality.read_mask(cam_quality.image_path(bench, r, "lungs")),
                      "patient": r["patient_key"]}
    return {"val": [item(r) for r in val], "test": [item(r) for r in test]}


# ---------------------------------------------------------------- the lung ROI model


# Tried 2026-12-01 (real data, seed 0): 150 epochs (300 keep the same epoch: the best validation loss is kept)
# -> lung Dice val / test 0.905 / 0.899 against 0.896 / 0.889, and clicks.py's real NoC@0.85 val / test
# chained_walker 7.70 / 9.54 against 8.33 / 9.96, guided_walker 7.07 / 8.75 against 7.27 / 9.00; 256 px, 100
# epochs: 8.10 / 8.82 and 7.20 / 8.54; the TRUE lungs + 3 % in its place (no model gets there): 7.10 / 8.68 and
# 6.73 / 7.93. Not changed: under a click, and every prior-using table is built on this model.
ROI_SIZE, ROI_EPOCHS = 128, 40


def _lung_pairs(kind: str, strength: float, seed: int) -> list[tuple[Path, Path]]:
    """(image, lung mask) files of the TRAIN patients only: real data, the manifest's rows with a
    lung mask of every patient outside val and test; the bench, one radiograph (its first variant)
    per background of cam_quality's train-minus-val patients (the variants share their lungs)."""
    if kind == "real":
        splits, _ = real_items(seed)
        held = {it["patient"] for items in splits.values() for it in items}
        manifest = csv.DictReader(open(CXR / "manifest.csv"))
        return [(CXR / r["file"], CXR / r["lung_mask_file"]) for r in manifest
                if r["file"].startswith("images/") and r["lung_mask_file"] and r["patient_key"] not in held]
    if kind == "bench":
        bench = cam_quality.build_bench(strength)
        train, _ = cam_quality.val_split(cam_quality.bench_rows(bench), 0.2, seed)
        first = {}
        for r in sorted(train, key=lambda r: r["id"]):
            first.setdefault(r["background_id"], r)
        return [(cam_quality.image_path(bench, r), cam_quality.image_path(bench, r, "lungs")) for r in first.values()]
    raise ValueError(f"kind must be 'real' or 'bench', got {kind!r}")


def lung_roi_model(kind: str, strength: float = 5.0, *, epochs: int = ROI_EPOCHS, size: int = ROI_SIZE,
                   seed: int = 0) -> dict:
    """A lung ROI model trained with the product's own ``labeler train-segmenter`` on the lung masks
    of the train patients of the real data (``kind="real"``) or of the lesion bench at ``strength``
    (``kind="bench"``), cached under ``.cache/prelabel-quality/``: {"path", "command", "seconds",
    "images", "cached"}. Use it as the backend does: ``Prelabeler(..., roi_model=Segmenter(
    load_segmenter(path)), prior=PriorSettings())``."""
    name = "real" if kind == "real" else f"bench-strength{strength:g}"
    out = CACHE / f"roi-lungs-{name}-{size}px-{epochs}ep-seed{seed}.keras"
    info = out.with_suffix(".train.json")
    if out.is_file() and info.is_file():
        return {**json.loads(info.read_text()), "path": out, "cached": True}
    pairs = _lung_pairs(kind, strength, seed)
    folder = out.with_suffix(".pairs")
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        for old in (folder / sub).iterdir():
            old.unlink()
    for image, mask in pairs:
        (folder / "images" / f"{image.stem}.png").symlink_to(image.resolve())
        (folder / "masks" / f"{image.stem}.png").symlink_to(mask.resolve())
    command = [str(cam_quality.LABELER), "train-segmenter", str(folder), "--out", str(out), "--label", "Lungs",
               "--size", str(size), "--epochs", str(epochs), "--seed", str(seed)]
    print("$", " ".join(command), file=sys.stderr)
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    result = {"command": "labeler train-segmenter PAIRS --out M.keras " + " ".join(command[5:]),
              "seconds": time.perf_counter() - started, "images": len(pairs)}
    info.write_text(json.dumps(result, indent=2))
    return {**result, "path": out, "cached": False}


# ---------------------------------------------------------------- scoring


def score(preds, items) -> dict:
    """dice, edit (means over lesion images), fp, fp_lung (means over clear images), counts."""
    from models.agreement import edit_fraction

    dice, edit, fp, fp_lung = [], [], [], []
    for pred, it in zip(preds, items):
        truth = it["truth"]
        if it["label"] == "opacity":
            total = pred.sum() + truth.sum()
            dice.append(2 * np.logical_and(pred, truth).sum() / total if total else 0.0)
            edit.append(edit_fraction(pred, truth))
        else:
            fp.append(pred.mean())
            fp_lung.append(pred.sum() / max(it["lungs"].sum(), 1))
    mean = lambda v: float(np.mean(v)) if v else float("nan")  # noqa: E731
    return {"dice": mean(dice), "edit": mean(edit), "fp": mean(fp), "fp_lung": mean(fp_lung),
            "n_lesion": len(dice), "n_clear": len(fp)}


def _drawn(prelabel) -> list[tuple[float, np.ndarray]]:
    """(class probability, (H, W) bool union of its regions) per class the backend outlines."""
    from explain.labelstudio.configs import NEGATIVE_CLASSES

    out = []
    for cls in prelabel.classes:
        if cls.class_name.lower() not in NEGATIVE_CLASSES:
            mask = np.zeros((prelabel.height, prelabel.width), bool)
            for region in cls.regions:
                mask |= region.mask
            out.append((cls.probability, mask))
    return out


def gated(drawn, shape: tuple[int, int], min_probability: float) -> np.ndarray:
    """The image's pre-label mask with ``PrelabelSettings.min_probability`` applied post hoc: the
    regions of the classes at least that probable (the backend gives those classes' regions only)."""
    mask = np.zeros(shape, bool)
    for probability, m in drawn:
        if probability >= min_probability:
            mask |= m
    return mask


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return float(2 * np.logical_and(a, b).sum() / total) if total else 1.0


def evaluate(model_path: Path, roi_path: Path, items: list[dict], grid, gates) -> dict:
    """Every (shape, threshold) of ``grid`` x ROI source x min_probability of ``gates`` on ``items``:
    {"scores": {(shape, roi, threshold, min_probability): score}, "seconds": {shape: post-processing
    seconds}, "accuracy", "positive" (images outlined), "roi": the ROI model's lung Dice (margin 0) and
    the lesion pixels its region of interest (default margin) keeps, "gate_checks"}.

    ROI "roi model" is the backend's path: the Prelabeler holds the ROI model and ``PriorSettings()``;
    "none" and "lungs+3%" run the same outputs without its map (the latter with the dilated true lungs
    as the explicit roi)."""
    from explain.anatomy import PriorSettings, roi_mask
    from explain.labelstudio.configs import NEGATIVE_CLASSES
    from explain.prelabel import Prelabeler, prelabel_settings
    from explain.regions import RegionSettings, Threshold
    from models.loading import load_classifier, load_segmenter
    from models.segmentation import Segmenter

    loaded = load_classifier(model_path)
    prelabeler = Prelabeler(loaded.model, loaded.spec, prelabel_settings(method="layercam"),
                            roi_model=Segmenter(load_segmenter(roi_path)), prior=PriorSettings())
    base = prelabeler.settings
    images = cam_quality.load_images([it["image"] for it in items])
    outputs = prelabeler.explain(images)
    names = loaded.spec.class_names
    predicted = [names[int(np.argmax(o.explanation.probabilities))] for o in outputs]
    drawn = [i for i, p in enumerate(predicted) if p.lower() not in NEGATIVE_CLASSES]
    truth_positive = [it["label"] == "opacity" for it in items]
    lung_dice, kept = [], []
    for o, im, it in zip(outputs, images, items):
        h, w = im.shape[:2]
        lung_dice.append(_dice(roi_mask(o.roi_map, w, h, PriorSettings(margin=0.0)), it["lungs"]))
        if it["truth"].any():
            kept.append(float((roi_mask(o.roi_map, w, h, PriorSettings()) & it["truth"]).sum() / it["truth"].sum()))
    result = {"scores": {}, "seconds": {}, "positive": len(drawn), "gate_checks": 0,
              "roi": {"lung_dice": float(np.mean(lung_dice)), "lesion_kept": float(np.mean(kept)) if kept else float("nan")},
              "accuracy": float(np.mean([(p.lower() not in NEGATIVE_CLASSES) == t for p, t in zip(predicted, truth_positive)]))}
    bare = [replace(o, roi_map=None) for o in outputs]
    for roi_name in ROI_NAMES:
        outs = outputs if roi_name == "roi model" else bare
        rois = [dilated_lungs(images[i], items[i]["lungs"]) if roi_name == "lungs+3%" else None for i in drawn]
        for shape, threshold in grid:
            prelabeler.settings = replace(base, regions=RegionSettings(Threshold.parse(threshold), shape=shape))
            started = time.perf_counter()
            made = prelabeler.regions([images[i] for i in drawn], [outs[i] for i in drawn], rois)
            result["seconds"][shape] = result["seconds"].get(shape, 0.0) + time.perf_counter() - started
            per_image = [_drawn(p) for p in made]
            for gate in gates:
                masks = [np.zeros(it["truth"].shape, bool) for it in items]
                for i, d in zip(drawn, per_image):
                    masks[i] = gated(d, items[i]["truth"].shape, gate)
                result["scores"][shape, roi_name, threshold, gate] = score(masks, items)
                if shape == "map" and roi_name == "roi model" and gate:
                    # The post-hoc gate must be what the backend's own min_probability gives.
                    prelabeler.settings = replace(prelabeler.settings, min_probability=gate)
                    own = cam_quality.masks_of(prelabeler.regions([images[i] for i in drawn], [outs[i] for i in drawn], rois))
                    prelabeler.settings = replace(prelabeler.settings, min_probability=0.0)
                    if any((a != masks[i]).any() for i, a in zip(drawn, own)):
                        raise AssertionError(f"post-hoc gate {gate} differs from PrelabelSettings.min_probability")
                    result["gate_checks"] += 1
    result["scores"][BASELINE_LUNG] = score([it["lungs"] for it in items], items)
    result["scores"][BASELINE_EMPTY] = score([np.zeros(it["truth"].shape, bool) for it in items], items)
    return result


BASELINE_LUNG = ("whole lung", "-", "-", "-")
BASELINE_EMPTY = ("empty", "-", "-", "-")


def best(scores: dict, rois=None) -> tuple:
    """The key with the lowest edit fraction (ties, to 3 decimals: the higher Dice) among the
    settings whose ROI is in ``rois`` (None: any); baselines excluded."""
    keys = [k for k in scores if k[1] != "-" and (rois is None or k[1] in rois)]
    return min(keys, key=lambda k: (round(scores[k]["edit"], 3), -scores[k]["dice"]))


def shape_timings(model_path: Path, roi_path: Path, paths: list[Path], shapes, threshold: str = "fraction:0.2",
                  size: int = 1024, repeats: int = 2) -> dict:
    """Mean ms per image of the post-processing step (``Prelabeler.regions``: the ROI model's
    prior, threshold, shape, regions) for each shape, on ``paths`` upsampled to ``size`` x ``size``."""
    from explain.anatomy import PriorSettings
    from explain.prelabel import Prelabeler, prelabel_settings
    from models.loading import load_classifier, load_segmenter
    from models.segmentation import Segmenter

    loaded = load_classifier(model_path)
    images = [cv2.resize(im, (size, size), interpolation=cv2.INTER_CUBIC).clip(0, 1) for im in cam_quality.load_images(paths)]
    timings = {}
    for shape in shapes:
        prelabeler = Prelabeler(loaded.model, loaded.spec, prelabel_settings(method="layercam", cam_threshold=threshold, shape=shape),
                                roi_model=Segmenter(load_segmenter(roi_path)), prior=PriorSettings())
        outputs = prelabeler.explain(images)
        prelabeler.regions(images[:1], outputs[:1])  # warm-up
        started = time.perf_counter()
        for _ in range(repeats):
            prelabeler.regions(images, outputs)
        timings[shape] = 1000 * (time.perf_counter() - started) / (repeats * len(images))
    return timings


# ---------------------------------------------------------------- report


def _cells(s: dict) -> str:
    f = lambda v, p: "–" if v != v else f"{v:.{p}f}"  # noqa: E731
    return f"{f(s['dice'], 3)} | {f(s['edit'], 3)} | {f(s['fp'], 4)} | {f(s['fp_lung'], 3)}"


def _name(key: tuple) -> str:
    return f"`{key[0]}`, ROI {key[1]}, `{key[2]}`, min_probability {key[3]:g}"


HEAD = ("| val Dice | val edit | val fp | val fp/lung | test Dice | test edit | test fp | test fp/lung |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|")


def _row(label: str, key: tuple, run: dict, extra: str = "") -> str:
    return f"| {label} |{extra} {_cells(run['val']['scores'][key])} | {_cells(run['test']['scores'][key])} |"


def report(runs: dict, args, seconds: float, timings: dict, default_from: str) -> str:
    machine = hardware()
    command = f"python benchmarks/prelabel_quality.py --out {args.out}" + " --quick" * args.quick + \
        (f" --only {args.only}" if args.only else "")
    lines = [
        MARKERS[0],
        f"## Pre-labels worth keeping: shape x ROI (a trained lung model) x threshold x gating (issue 13){' (quick)' if args.quick else ''}",
        "",
        f"{datetime.date.today().isoformat()}; {machine['cpu']}, {machine['cores']} cores, {machine['ram_gib']:.0f} GiB, "
        f"CPU only, load average {load_average()} at the end. Command: `{command}`, {seconds / 60:.1f} min in all.",
        "",
        "Grad-CAM maps: `layercam`, `CAM_TARGET=predicted` (no regions when a negative class is predicted), holes "
        "filled, regions under 0.1 % dropped, as the backend. ROI sources: `none`; `roi model`, a lung segmenter "
        "trained by the product's own `labeler train-segmenter` on the lung masks of the TRAIN patients only, used "
        "as the backend uses `ROI_MODEL_PATH` (`Prelabeler(..., roi_model=Segmenter(...), prior=PriorSettings())`: "
        "threshold 0.5, two largest components, margin 3 % of the shorter side); `lungs+3%`, the TRUE lung mask "
        "dilated by 3 % of the longest side, a reference only (no product has it). min_probability: "
        "`PrelabelSettings.min_probability` (`MIN_PROBABILITY`), applied post hoc from the class probability and "
        "checked equal to the backend's own gating (map shape, ROI model, every gate, every split). Shapes: "
        f"{', '.join(args.shapes)}" + (" (random_walker and slic left out of the grid for time)" if "slic" not in args.shapes else "") + ". "
        "Dice and edit fraction ((FP + FN) / truth pixels; 0 = nothing to fix, 1 = as much work as drawing "
        "from scratch): means over lesion images, an empty pre-label scores Dice 0 and edit 1. fp: mean fraction "
        "of the image pre-labelled on normal / clear images; fp/lung: the same relative to the lung area. Test "
        "never chooses.",
        "",
        "### The lung ROI models",
        "",
        "| data set | trained on | command | seconds | lung Dice val | lung Dice test | lesion pixels kept val | lesion pixels kept test |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, run in runs.items():
        r = run["roi_model"]
        lines.append(f"| {run['short']} | {r['images']} train-patient images | `{r['command']}` | {r['seconds']:.0f}"
                     f"{' (cached)' if r['cached'] else ''} | {run['val']['roi']['lung_dice']:.3f} | {run['test']['roi']['lung_dice']:.3f} | "
                     f"{run['val']['roi']['lesion_kept']:.3f} | {run['test']['roi']['lesion_kept']:.3f} |")
    lines += ["", "Lung Dice: the ROI model's mask (threshold 0.5, two largest components, no margin) against the true "
              "lungs, mean over the images. Lesion pixels kept: the fraction of each true lesion inside its region of "
              "interest with the default 3 % margin (what the prior lets through), mean over lesion images.", ""]
    if default_from in runs:
        source = runs[default_from]
        chosen = best(source["val"]["scores"], ("none", "roi model"))
        lines += [
            "### The product default",
            "",
            f"Chosen on {source['short']} VALIDATION by edit fraction (tie: Dice) among settings the product can "
            f"run (ROI none or roi model): **{_name(chosen)}**. The same setting on every data set:",
            "",
            "| data set | setting " + HEAD[0], "|---|---" + HEAD[1],
        ]
        for name, run in runs.items():
            lines.append(_row(run["short"], chosen, run, " chosen |"))
            lines.append(_row(run["short"], BASELINE_LUNG, run, " whole lung |"))
            lines.append(_row(run["short"], BASELINE_EMPTY, run, " empty |"))
        lines += ["", "The chosen setting at every min_probability (val / test edit):", "",
                  "| data set | " + " | ".join(f"min_probability {g:g}" for g in args.gates) + " |",
                  "|---|" + "---:|" * len(args.gates)]
        for name, run in runs.items():
            cells = [f"{run['val']['scores'][(*chosen[:3], g)]['edit']:.3f} / {run['test']['scores'][(*chosen[:3], g)]['edit']:.3f}"
                     for g in args.gates]
            lines.append(f"| {run['short']} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["### Shape step at 1024 x 1024", "",
              f"Mean ms per image of the whole post-processing step (`Prelabeler.regions`: the ROI model's region of "
              f"interest, threshold `fraction:0.2`, shape, regions), {len(timings.get('images', []))} real radiographs "
              "upsampled to 1024 x 1024, 2 repeats after a warm-up; the shape's own cost is the difference to `map`.", "",
              "| shape | ms / image | over map |", "|---|---:|---:|"]
    for shape, ms in timings.get("ms", {}).items():
        lines.append(f"| {shape} | {ms:.0f} | {ms - timings['ms']['map']:+.0f} |")
    lines.append("")
    for name, run in runs.items():
        val, test = run["val"], run["test"]
        own = best(val["scores"], ("none", "roi model"))
        ref = best(val["scores"])
        lines += [
            f"### {run['title']}",
            "",
            f"Classifier: {run['classifier']} Val: {val['n']} images ({val['scores'][BASELINE_EMPTY]['n_lesion']} with "
            f"lesions), accuracy (lesion vs clear) {val['accuracy']:.3f}, {val['positive']} outlined; test: {test['n']} "
            f"images ({test['scores'][BASELINE_EMPTY]['n_lesion']} with lesions), accuracy {test['accuracy']:.3f}, "
            f"{test['positive']} outlined. Post-processing seconds per shape (val + test, all settings): "
            + ", ".join(f"{k} {val['seconds'][k] + test['seconds'][k]:.0f}" for k in val["seconds"])
            + f". Gating checks (post hoc = backend): {val['gate_checks'] + test['gate_checks']}, all equal.",
            "",
            f"Best on THIS data set's own validation split (not the product default; chosen here, scored on test): "
            f"realisable **{_name(own)}**; with the true-lung reference allowed: {_name(ref)}."
            + (f" Its validation edit fraction is {val['scores'][own]['edit']:.3f}: no realisable setting beats drawing "
               "nothing (empty, edit 1) on this data set's validation split." if val["scores"][own]["edit"] >= 1 else ""),
            "",
            "Best setting of each shape x ROI on validation edit fraction:",
            "",
            "| shape | roi | threshold | min_p " + HEAD[0], "|---|---|---|---:" + HEAD[1],
        ]
        for shape in args.shapes:
            for roi in ROI_NAMES:
                key = best({k: v for k, v in val["scores"].items() if k[0] == shape and k[1] == roi})
                b = "**" if key == own else ""
                lines.append(f"| {b}{shape}{b} | {roi} | {key[2]} | {key[3]:g} | {_cells(val['scores'][key])} | {_cells(test['scores'][key])} |")
        for base in (BASELINE_LUNG, BASELINE_EMPTY):
            lines.append(f"| {base[0]} (baseline) | – | – | – | {_cells(val['scores'][base])} | {_cells(test['scores'][base])} |")
        lines += ["", "<details><summary>every setting</summary>", "",
                  "| shape | roi | threshold | min_p " + HEAD[0], "|---|---|---|---:" + HEAD[1]]
        lines += [f"| {k[0]} | {k[1]} | {k[2]} | {k[3]:g} | {_cells(val['scores'][k])} | {_cells(test['scores'][k])} |"
                  for k in val["scores"] if k[1] != "-"]
        lines += ["", "</details>", ""]
    lines.append(MARKERS[1])
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def main(argv=None) -> None:
    from explain.shapes import SHAPES as ALL_SHAPES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="markdown file to write the section into")
    parser.add_argument("--quick", action="store_true", help="one threshold, a third of the images, 3-epoch classifiers")
    parser.add_argument("--only", choices=("real", "bench"), help="one kind of data set")
    parser.add_argument("--seed", type=int, default=0, help="split and training seed")
    parser.add_argument("--epochs", type=int, default=40, help="real classifier's training epochs")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    args.shapes, args.gates = SHAPES, GATES
    grid = [(shape, t) for shape in SHAPES for t in (QUICK_THRESHOLDS if args.quick else MAP_THRESHOLDS if shape == "map" else THRESHOLDS)]
    thin = (lambda items: items[::3]) if args.quick else (lambda items: items)
    # The bench has ~300 val + test images per strength: every second one keeps the run affordable on 2 cores.
    thin_bench = (lambda items: items[::6]) if args.quick else (lambda items: items[::BENCH_EVERY])
    runs, timings = {}, {}
    if args.only in (None, "real"):
        splits, train = real_items(args.seed)
        model = real_classifier(train, 3 if args.quick else args.epochs, args.seed)
        roi = lung_roi_model("real", seed=args.seed)
        run = {"title": "(a) real radiologist lesion masks (../shared/data/cxr), patient-level val / test halves",
               "short": "real", "roi_model": roi, "classifier": f"`{model['command']}` on {len(train)} images of the "
               f"other patients ({'cached; ' if model['cached'] else ''}trained in {model['seconds']:.0f} s)."}
        for split, items in splits.items():
            run[split] = {**evaluate(model["path"], roi["path"], thin(items), grid, GATES), "n": len(thin(items))}
            print(f"[real {split}] {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        runs["real"] = run
        paths = [it["image"] for it in splits["val"]][:4]
        timings = {"images": paths, "ms": shape_timings(model["path"], roi["path"], paths, tuple(ALL_SHAPES))}
        print(f"[timings] {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    if args.only in (None, "bench"):
        for strength in STRENGTHS:
            trained = cam_quality.classifier(strength, epochs=3 if args.quick else cam_quality.DEFAULT_EPOCHS)
            roi = lung_roi_model("bench", strength, seed=args.seed)
            run = {"title": f"(b) lesion benchmark, strength {strength:g} (cam_quality's val split and test split, every "
                            f"{6 if args.quick else BENCH_EVERY}th image)".replace("every 2th", "every second"),
                   "short": f"bench strength {strength:g}", "roi_model": roi,
                   "classifier": f"cam_quality's, `{trained['command']}` "
                   f"({'cached; ' if trained['cached'] else ''}trained in {trained['seconds'] / 60:.1f} min)."}
            for split, items in bench_items(strength, args.seed).items():
                run[split] = {**evaluate(trained["path"], roi["path"], thin_bench(items), grid, GATES), "n": len(thin_bench(items))}
                print(f"[bench {strength:g} {split}] {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
            runs[f"bench{strength:g}"] = run
    text = report(runs, args, time.perf_counter() - started, timings, "bench5")
    print(text)
    write_section(args.out, *MARKERS, text)


if __name__ == "__main__":
    main()
