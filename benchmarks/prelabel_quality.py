"""Which shape method outlines the pre-labels best: the map thresholded, or the image followed?

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
backend) are computed once; then every shape method (``explain.shapes.SHAPES``) x region of
interest (none, or a ROI source: by default the true lung mask dilated by 3 % of the image's
longest side, a stand-in for a lung model; see ``ROI_SOURCES``) x threshold is run through the
backend's own post-processing (``Prelabeler.regions``), and the image's mask is what the backend
outlines (``cam_quality.masks_of``: nothing when a negative class is predicted). Baselines: the
true lung mask ("whole lung") and "empty".

Columns: Dice (mean over lesion images, an empty prediction scores 0); edit fraction (mean over
lesion images of (FP + FN) / truth pixels, ``labeler.agreement.edit_fraction``); fp (mean fraction
of the image pre-labelled on normal / clear images); fp/lung (the same relative to the image's lung
area). The best setting of each data set is the lowest validation edit fraction (tie: Dice),
reported on test.

    python benchmarks/prelabel_quality.py --out /work/notes/s-bench.md [--quick] [--only real]

Cached under ``.cache/prelabel-quality/`` (the bench and its classifiers under cam_quality's).
"""
from __future__ import annotations

import argparse
import csv
import datetime
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
THRESHOLDS = ("fraction:0.2", "fraction:0.4", "fraction:0.6")
QUICK_THRESHOLDS = ("fraction:0.4",)
STRENGTHS = (5.0, 1.0)
REAL_CLASSES = ("covid", "normal", "pneumonia")
BENCH_EVERY = 2  # every second bench image (in split order) is scored


def dilated_lungs(image: np.ndarray, lungs: np.ndarray) -> np.ndarray:
    """The true lung mask grown by 3 % of the image's longest side: (H, W) bool."""
    r = max(1, round(0.03 * max(lungs.shape)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    return cv2.dilate(lungs.astype(np.uint8), kernel) > 0


# A ROI source: (image (H, W, 3) float in [0, 1], true lungs (H, W) bool) -> (H, W) bool, or None
# for no ROI. A lung model plugs in here as a function of the image alone.
ROI_SOURCES = {"none": None, "lungs+3%": dilated_lungs}


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


# ---------------------------------------------------------------- scoring


def score(preds, items) -> dict:
    """dice, edit (means over lesion images), fp, fp_lung (means over clear images), counts."""
    from labeler.agreement import edit_fraction

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


def evaluate(model_path: Path, items: list[dict], shapes, thresholds) -> dict:
    """Every shape x ROI source x threshold on ``items``: {"scores": {(shape, roi, threshold):
    score}, "seconds": {shape: post-processing seconds}, "accuracy", "positive" (images outlined)}."""
    from explain.labelstudio.configs import NEGATIVE_CLASSES
    from explain.prelabel import Prelabeler, prelabel_settings
    from explain.regions import RegionSettings, Threshold
    from models.loading import load_classifier

    loaded = load_classifier(model_path)
    prelabeler = Prelabeler(loaded.model, loaded.spec, prelabel_settings(method="layercam"))
    images = cam_quality.load_images([it["image"] for it in items])
    outputs = prelabeler.explain(images)
    names = loaded.spec.class_names
    predicted = [names[int(np.argmax(o.explanation.probabilities))] for o in outputs]
    drawn = [i for i, p in enumerate(predicted) if p.lower() not in NEGATIVE_CLASSES]
    truth_positive = [it["label"] == "opacity" for it in items]
    result = {"scores": {}, "seconds": {}, "positive": len(drawn),
              "accuracy": float(np.mean([(p.lower() not in NEGATIVE_CLASSES) == t for p, t in zip(predicted, truth_positive)]))}
    for roi_name, source in ROI_SOURCES.items():
        rois = [None if source is None else source(images[i], items[i]["lungs"]) for i in drawn]
        for shape in shapes:
            for threshold in thresholds:
                prelabeler.settings = replace(prelabeler.settings, regions=RegionSettings(Threshold.parse(threshold), shape=shape))
                started = time.perf_counter()
                made = prelabeler.regions([images[i] for i in drawn], [outputs[i] for i in drawn], rois)
                result["seconds"][shape] = result["seconds"].get(shape, 0.0) + time.perf_counter() - started
                masks = [np.zeros(it["truth"].shape, bool) for it in items]
                for i, m in zip(drawn, cam_quality.masks_of(made)):
                    masks[i] = m
                result["scores"][shape, roi_name, threshold] = score(masks, items)
    result["scores"]["whole lung", "-", "-"] = score([it["lungs"] for it in items], items)
    result["scores"]["empty", "-", "-"] = score([np.zeros(it["truth"].shape, bool) for it in items], items)
    return result


def best(scores: dict) -> tuple:
    """The key with the lowest edit fraction (ties, to 3 decimals: the higher Dice); baselines excluded."""
    keys = [k for k in scores if k[1] != "-"]
    return min(keys, key=lambda k: (round(scores[k]["edit"], 3), -scores[k]["dice"]))


# ---------------------------------------------------------------- report


def _cells(s: dict) -> str:
    f = lambda v, p: "–" if v != v else f"{v:.{p}f}"  # noqa: E731
    return f"{f(s['dice'], 3)} | {f(s['edit'], 3)} | {f(s['fp'], 4)} | {f(s['fp_lung'], 3)}"


def report(runs: dict, args, seconds: float) -> str:
    machine = hardware()
    command = "python benchmarks/prelabel_quality.py --out /work/notes/s-bench.md" + " --quick" * args.quick + \
        (f" --only {args.only}" if args.only else "")
    lines = [
        MARKERS[0],
        f"## Pre-label shapes: the map thresholded or the image followed (issue 13){' (quick)' if args.quick else ''}",
        "",
        f"{datetime.date.today().isoformat()}; {machine['cpu']}, {machine['cores']} cores, {machine['ram_gib']:.0f} GiB, "
        f"CPU only, load average {load_average()} at the end. Command: `{command}`, {seconds / 60:.1f} min in all.",
        "",
        "Grad-CAM maps: `layercam`, `CAM_TARGET=predicted` (no regions when a negative class is predicted), holes "
        "filled, regions under 0.1 % dropped, as the backend. ROI `lungs+3%`: the true lung mask dilated by 3 % of the "
        "image's longest side (stand-in for a lung model). Dice and edit fraction ((FP + FN) / truth pixels; 0 = "
        "nothing to fix, 1 = as much work as drawing from scratch): means over lesion images, an empty pre-label "
        "scores Dice 0 and edit 1. fp: mean fraction of the image pre-labelled on normal / clear images; fp/lung: "
        "the same relative to the lung area. Chosen per data set: lowest validation edit fraction (tie: Dice); "
        "test never chooses.",
        "",
    ]
    for name, run in runs.items():
        val, test = run["val"], run["test"]
        chosen = best(val["scores"])
        lines += [
            f"### {run['title']}",
            "",
            f"Classifier: {run['classifier']} Val: {val['n']} images ({val['scores']['empty', '-', '-']['n_lesion']} with "
            f"lesions), accuracy (lesion vs clear) {val['accuracy']:.3f}, {val['positive']} outlined; test: {test['n']} "
            f"images ({test['scores']['empty', '-', '-']['n_lesion']} with lesions), accuracy {test['accuracy']:.3f}, "
            f"{test['positive']} outlined. Post-processing seconds per shape (val + test, all settings): "
            + ", ".join(f"{k} {val['seconds'][k] + test['seconds'][k]:.0f}" for k in val["seconds"]) + ".",
            "",
            f"**Chosen: `{chosen[0]}`, ROI {chosen[1]}, `{chosen[2]}`** — test Dice {test['scores'][chosen]['dice']:.3f}, "
            f"edit {test['scores'][chosen]['edit']:.3f} (whole lung: {test['scores']['whole lung', '-', '-']['dice']:.3f} / "
            f"{test['scores']['whole lung', '-', '-']['edit']:.3f}; empty: 0 / 1).",
            "",
            "Best setting of each shape on validation edit fraction:",
            "",
            "| shape | roi | threshold | val Dice | val edit | val fp | val fp/lung | test Dice | test edit | test fp | test fp/lung |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for shape in run["shapes"]:
            key = best({k: v for k, v in val["scores"].items() if k[0] == shape})
            b = "**" if key == chosen else ""
            lines.append(f"| {b}{shape}{b} | {key[1]} | {key[2]} | {_cells(val['scores'][key])} | {_cells(test['scores'][key])} |")
        for base in ("whole lung", "empty"):
            key = (base, "-", "-")
            lines.append(f"| {base} (baseline) | – | – | {_cells(val['scores'][key])} | {_cells(test['scores'][key])} |")
        lines += ["", "<details><summary>every setting</summary>", "",
                  "| shape | roi | threshold | val Dice | val edit | val fp | val fp/lung | test Dice | test edit | test fp | test fp/lung |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {k[0]} | {k[1]} | {k[2]} | {_cells(val['scores'][k])} | {_cells(test['scores'][k])} |"
                  for k in val["scores"] if k[1] != "-"]
        lines += ["", "</details>", ""]
    lines.append(MARKERS[1])
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def main(argv=None) -> None:
    from explain.shapes import SHAPES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="markdown file to write the section into")
    parser.add_argument("--quick", action="store_true", help="one threshold, a third of the images, 3-epoch real classifier")
    parser.add_argument("--only", choices=("real", "bench"), help="one kind of data set")
    parser.add_argument("--seed", type=int, default=0, help="split and training seed")
    parser.add_argument("--epochs", type=int, default=40, help="real classifier's training epochs")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    shapes, thresholds = tuple(SHAPES), QUICK_THRESHOLDS if args.quick else THRESHOLDS
    thin = (lambda items: items[::3]) if args.quick else (lambda items: items)
    # The bench has ~300 val + test images per strength: every second one keeps the run under ~20 min on 2 cores.
    thin_bench = (lambda items: items[::6]) if args.quick else (lambda items: items[::BENCH_EVERY])
    runs = {}
    if args.only in (None, "real"):
        splits, train = real_items(args.seed)
        model = real_classifier(train, 3 if args.quick else args.epochs, args.seed)
        run = {"title": "(a) real radiologist lesion masks (../shared/data/cxr), patient-level val / test halves",
               "shapes": shapes, "classifier": f"`{model['command']}` on {len(train)} images of the other patients "
               f"({'cached; ' if model['cached'] else ''}trained in {model['seconds']:.0f} s)."}
        for split, items in splits.items():
            run[split] = {**evaluate(model["path"], thin(items), shapes, thresholds), "n": len(thin(items))}
            print(f"[real {split}] {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        runs["real"] = run
    if args.only in (None, "bench"):
        for strength in STRENGTHS:
            trained = cam_quality.classifier(strength, epochs=3 if args.quick else cam_quality.DEFAULT_EPOCHS)
            run = {"title": f"(b) lesion benchmark, strength {strength:g} (cam_quality's val split and test split, every "
                            f"{6 if args.quick else BENCH_EVERY}th image)".replace("every 2th", "every second"),
                   "shapes": shapes, "classifier": f"cam_quality's, `{trained['command']}` "
                   f"({'cached; ' if trained['cached'] else ''}trained in {trained['seconds'] / 60:.1f} min)."}
            for split, items in bench_items(strength, args.seed).items():
                run[split] = {**evaluate(trained["path"], thin_bench(items), shapes, thresholds), "n": len(thin_bench(items))}
                print(f"[bench {strength:g} {split}] {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
            runs[f"bench{strength:g}"] = run
    text = report(runs, args, time.perf_counter() - started)
    print(text)
    write_section(args.out, *MARKERS, text)


if __name__ == "__main__":
    main()
