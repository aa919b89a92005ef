"""The loop measured: does a U-Net trained on corrected masks pre-label better than Grad-CAM?

Two data sets, each written as a ``labeler export --format png`` folder (images, index masks,
manifest with patient-level splits, labels.json) so that the U-Nets are trained by the product's
own ``labeler.segmenting.train_on_export`` (what ``labeler train-segmenter`` runs):

(a) the lesion benchmark (``../shared/tools/lesion_bench``, built and split by
    ``benchmarks/cam_quality.py`` at the strength its main table uses, 5 by default: its train split
    minus a patient-level val split / val / its test split; the classifier is cam_quality's for
    that strength). The "corrected masks" are the benchmark's true masks of the train images (clear images
    have empty masks: they are corrected labels too).
(b) the real radiologist lesion masks of ``../shared/data/cxr/lesions/`` (GGO, consolidation,
    pneumothorax merged into one "Opacity" label; 60 images of 41 patients), split by
    ``patient_key`` (seeded: about 25 % test, 15 % val), and, as the clear images of its test split,
    the normal radiographs of a seeded half of the normal patients that have a lung mask (left out
    of the classifier's training; not U-Net tasks).

For each, U-Nets are trained on 10, 20, 40 and all of the train tasks (same number of gradient
steps for every size, so that small sets are not under-trained), and every pre-label source of
the backend is scored on the test split through ``explain.prelabel.Prelabeler``, exactly as the
backend pre-labels: "gradcam" with the product's default settings (backend.config), "segmenter"
and "fusion". The classifiers: (a) the cam_quality one (clear / opacity); (b) a small CNN trained
with ``labeler train-classifier`` on the data set's covid / normal / pneumonia images, leaving
out the test patients.

Every table carries the trivial pre-labels "whole lung" (each image's lung mask) and "empty"
(nothing) first, scored by ``cam_quality.score`` like the sources: Dice, IoU and the edit fraction
(``models.agreement.edit_fraction``, mean over the images with a lesion; 1.0 = no gain over
drawing from scratch) on lesion images, and on clear (normal) images the predicted area as a
fraction of the image and of the image's lungs. Lung masks: the bench's ``lungs/<id>.png``; for
the real data the manifest's ``lung_mask_file`` (``lungs/<id>.png``, the seeds' ``seed/*__lungs.png``),
which every lesion image has; a normal image without one is never a test image, and an image
without one would be left out of the whole-lung row and the fp-per-lung mean only (the tables
give the counts).

    python benchmarks/segmenter_loop.py --out BENCHMARKS.md [--size 128] [--steps 400] [--quick]

``--quick`` is a smoke run (meaningless scores): U-Nets on 10 tasks only, 20 steps at 64 px with
filters 8,16; the classifiers trained for 3 (bench, cam_quality's ``--quick`` one) and 2 epochs.

Cached under ``.cache/segmenter-loop/``; results between ``<!-- segmenter-loop:start -->`` and
``<!-- segmenter-loop:end -->``.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import functools
import hashlib
import json
import math
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
import prelabel_quality  # noqa: E402  benchmarks/prelabel_quality.py
from results import hardware, load_average, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "segmenter-loop"
CXR = ROOT.parent / "shared" / "data" / "cxr"
LABEL = "Opacity"
COUNTS = (10, 20, 40)
QUICK = {"counts": (10,), "steps": 20, "size": 64, "filters": [8, 16], "bench_epochs": 3, "classifier_epochs": 2}
SOURCES = ("gradcam", "segmenter", "fusion")
VAL_TASKS = 48  # validation tasks kept per export: the U-Nets are validated every epoch
MARKERS = ("<!-- segmenter-loop:start -->", "<!-- segmenter-loop:end -->")


# ---------------------------------------------------------------- data sets as exports


def write_export(folder: Path, tasks: list[dict]) -> Path:
    """A png export of ``tasks`` (dicts with task_id, image (path), mask ((H, W) bool), split,
    patient) in the layout ``labeler export`` writes; rewritten only when missing."""
    from labeler.exporting import MANIFEST_COLUMNS

    if (folder / "manifest.csv").is_file():
        return folder
    val = [t for t in tasks if t["split"] == "val"]
    if len(val) > VAL_TASKS:  # a seeded subset: validating ~150 images every epoch costs more than training on 10
        keep = {val[i]["task_id"] for i in np.random.default_rng(0).permutation(len(val))[:VAL_TASKS]}
        tasks = [t for t in tasks if t["split"] != "val" or t["task_id"] in keep]
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(exist_ok=True)
    rows = []
    for t in tasks:
        image = cv2.imread(str(t["image"]), cv2.IMREAD_GRAYSCALE)
        if image.shape != t["mask"].shape:
            raise ValueError(f"{t['image']}: image {image.shape} and mask {t['mask'].shape} differ")
        cv2.imwrite(str(folder / "images" / f"{t['task_id']}.png"), image)
        cv2.imwrite(str(folder / "masks" / f"{t['task_id']}.png"), t["mask"].astype(np.uint8))
        rows.append({"task_id": t["task_id"], "image_file": f"images/{t['task_id']}.png",
                     "mask_file": f"masks/{t['task_id']}.png", "width": image.shape[1], "height": image.shape[0],
                     "patient": t["patient"], "split": t["split"]})
    (folder / "labels.json").write_text(json.dumps({"background": 0, "labels": [LABEL]}) + "\n")
    with open(folder / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, MANIFEST_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return folder


def lesion_bench_tasks(strength: float) -> list[dict]:
    """The lesion benchmark (as cam_quality builds it) as tasks: train minus val / val / test."""
    bench = cam_quality.build_bench(strength)
    rows = cam_quality.bench_rows(bench)
    val_ids = {r["id"] for r in cam_quality.val_split(rows)[1]}
    return [
        {"task_id": n + 1, "image": cam_quality.image_path(bench, r),
         "mask": cam_quality.read_mask(cam_quality.image_path(bench, r, "masks")),
         "lung": cam_quality.read_mask(cam_quality.image_path(bench, r, "lungs")),
         "split": "test" if r["split"] == "test" else ("val" if r["id"] in val_ids else "train"),
         "patient": r["patient_key"], "label": r["label"]}
        for n, r in enumerate(rows)
    ]


def real_lesion_tasks(seed: int = 0) -> list[dict]:
    """The images with radiologist lesion masks (all lesion kinds merged), split by patient, and
    the clear test images: the normal radiographs (with a lung mask) of a seeded half of the
    normal patients, or of a lesion patient in the test split. Each task has its "lung" mask
    ((H, W) bool, None without one)."""
    if not (CXR / "lesions" / "annotations.csv").is_file():
        raise SystemExit(f"{CXR}: the research data is not there (../shared/data/cxr)")
    manifest = {r["id"]: r for r in csv.DictReader(open(CXR / "manifest.csv"))}
    masks: dict[str, np.ndarray] = {}
    for r in csv.DictReader(open(CXR / "lesions" / "annotations.csv")):
        if r["kind"] != "mask":
            continue
        mask = cv2.imread(str(CXR / r["file"]), cv2.IMREAD_GRAYSCALE) > 127
        masks[r["id"]] = masks[r["id"]] | mask if r["id"] in masks else mask
    patients = sorted({manifest[i]["patient_key"] for i in masks})
    order = list(np.random.default_rng(seed).permutation(patients))
    n_test, n_val = round(0.25 * len(order)), round(0.15 * len(order))
    split_of = {p: "test" if k < n_test else "val" if k < n_test + n_val else "train" for k, p in enumerate(order)}
    normal = [i for i, r in sorted(manifest.items()) if r["label"] == "normal" and r["lung_mask_file"]]
    others = sorted({manifest[i]["patient_key"] for i in normal} - set(split_of))
    held = set(np.random.default_rng(seed).permutation(others)[: len(others) // 2]) if others else set()
    clear = [i for i in normal if split_of.get(manifest[i]["patient_key"], "") == "test" or manifest[i]["patient_key"] in held]
    tasks = [{"id": i, "mask": masks[i], "split": split_of[manifest[i]["patient_key"]], "label": "opacity"} for i in sorted(masks)]
    tasks += [{"id": i, "mask": None, "split": "test", "label": "clear"} for i in clear]
    for n, t in enumerate(tasks):
        row = manifest[t["id"]]
        lung = cv2.imread(str(CXR / row["lung_mask_file"]), cv2.IMREAD_GRAYSCALE) > 127 if row["lung_mask_file"] else None
        t.update(task_id=n + 1, image=CXR / row["file"], patient=row["patient_key"], lung=lung)
        if t["mask"] is None:
            t["mask"] = np.zeros(lung.shape, bool)
    return tasks


def real_classifier(test_patients: set[str], epochs: int) -> Path:
    """A small CNN (covid / normal / pneumonia) trained with ``labeler train-classifier`` on the
    data set's images, leaving out the test patients (the clear test images' included); cached per
    epochs and left-out set."""
    tag = hashlib.sha256("\n".join(sorted(test_patients)).encode()).hexdigest()[:8]
    out = CACHE / "real" / f"classifier-{epochs}ep-without-{tag}.keras"
    if out.is_file():
        return out
    data = out.with_suffix(".data")
    for row in csv.DictReader(open(CXR / "manifest.csv")):
        if row["label"] in ("covid", "normal", "pneumonia") and row["patient_key"] not in test_patients \
                and row["file"].startswith("images/"):
            (data / row["label"]).mkdir(parents=True, exist_ok=True)
            link = data / row["label"] / Path(row["file"]).name
            if not link.exists():
                link.symlink_to((CXR / row["file"]).resolve())
    command = [str(ROOT / ".venv" / "bin" / "labeler"), "train-classifier", str(data), "--out", str(out),
               "--size", "128", "--epochs", str(epochs)]
    print("  $", " ".join(command), file=sys.stderr)
    subprocess.run(command, check=True)
    return out


# ---------------------------------------------------------------- the loop


def train_curve(export: Path, counts, size: int, steps: int, batch_size: int, filters) -> dict[int, tuple[Path, float]]:
    """One U-Net per train-set size (the same ~``steps`` gradient steps each): {n: (path, seconds)}."""
    models = {}
    folder = export.parent / f"unet-{size}px-{steps}steps-b{batch_size}-f{'_'.join(map(str, filters))}"
    for n in counts:
        out = folder / f"unet-{n}.keras"
        models[n] = (out, train_unet(export, out, n, size, steps, batch_size, filters))
    return models


def train_unet(export: Path, out: Path, n: int, size: int, steps: int, batch_size: int, filters, seed: int = 0) -> float:
    """A U-Net trained by ``labeler train-segmenter``'s code on a seeded ``n`` of the export's train
    tasks (all of them when it has ``n``) for about ``steps`` gradient steps (at least 5 epochs),
    saved to ``out`` unless it is there; its training seconds (NaN when unrecorded)."""
    from labeler.segmenting import train_on_export

    timing = out.with_suffix(".seconds")
    if not out.is_file():
        epochs = max(5, math.ceil(steps / math.ceil(n / batch_size)))
        print(f"  training a U-Net on {n} tasks for {epochs} epochs", file=sys.stderr)
        started = time.perf_counter()
        train_on_export(export, out, size=size, epochs=epochs, batch_size=batch_size, filters=filters,
                        max_tasks=n, verbose=0, learning_rate=3e-3, seed=seed)
        timing.write_text(f"{time.perf_counter() - started:.1f}\n")
    return float(timing.read_text()) if timing.is_file() else float("nan")


def source_masks(classifier: Path, segmenter: Path | None, source: str, images, roi_model: Path | None = None,
                 shape: str | None = None) -> list[np.ndarray]:
    """What the backend draws for each image from ``source``, with its default settings (the
    anatomy prior ``roi_model`` as ``ROI_MODEL_PATH``; ``shape`` overrides ``CAM_SHAPE``):
    (H, W) bool per image, the union of the outlined regions."""
    return cam_quality.masks_of(backend_prelabels(classifier, segmenter, source, images, roi_model, shape))


def backend_prelabels(classifier: Path, segmenter: Path | None, source: str, images, roi_model: Path | None = None,
                      shape: str | None = None) -> list:
    """The ``explain.prelabel.Prelabel`` the backend makes for each image (each (H, W, 3) float in
    [0, 1]) from ``source``, with its default settings, the anatomy prior ``roi_model`` and
    ``shape`` as ``CAM_SHAPE`` (None: the default): masks and the prediction's score
    (``Prelabel.confidence``)."""
    from backend.config import Settings
    from backend.predictor import prelabel_settings
    from explain.prelabel import Prelabeler
    from models.loading import load_classifier, load_segmenter
    from models.segmentation import Segmenter

    loaded = _loaded(load_classifier, classifier)
    defaults = Settings(model_path=classifier)
    settings = prelabel_settings(replace(defaults, cam_shape=shape or defaults.cam_shape), source)
    lesions = Segmenter(_loaded(load_segmenter, segmenter)) if source != "gradcam" else None
    lungs = Segmenter(_loaded(load_segmenter, roi_model)) if roi_model else None
    prelabeler = Prelabeler(loaded.model, loaded.spec, settings, segmenter=lesions, roi_model=lungs)
    prelabels = []
    for start in range(0, len(images), 16):
        prelabels += prelabeler(images[start : start + 16])
    return prelabels


@functools.lru_cache(maxsize=None)
def _loaded(load, path: Path):
    """Each model file read once per run (every source and curve point reuses it)."""
    return load(path)


def run_loop(name: str, tasks: list[dict], classifier: Path, roi_model: Path, args) -> dict:
    """Train the curve on ``tasks`` and score the trivial pre-labels and every source on its test
    split, each with the anatomy prior ``roi_model``; the segmenter also with the map's own outline."""
    export = write_export(CACHE / name / "export", tasks)
    train_count = sum(t["split"] == "train" for t in tasks)
    counts = [n for n in args.counts if n < train_count] + ([] if args.quick else [train_count])
    models = train_curve(export, counts, args.size, args.steps, args.batch_size, tuple(args.filters))
    images, truths, labels, lungs = scored_split(tasks)
    score = lambda masks: cam_quality.score(masks, truths, labels, lungs=lungs)  # noqa: E731
    scores = {**cam_quality.trivial_scores(truths, labels, lungs),
              "gradcam": score(source_masks(classifier, None, "gradcam", images, roi_model))}
    for n, (path, _) in models.items():
        for source in ("segmenter", "fusion"):
            scores[(source, n)] = score(source_masks(classifier, path, source, images, roi_model))
        scores[("segmenter, map shape", n)] = score(source_masks(classifier, path, "segmenter", images, roi_model, "map"))
    return {"counts": counts, "scores": scores, "train_seconds": {n: s for n, (_, s) in models.items()},
            "tasks": {split: sum(t["split"] == split for t in tasks) for split in ("train", "val", "test")},
            "test_opacity": sum(label == "opacity" for label in labels),
            "test_without_lungs": sum(lung is None for lung in lungs)}


def scored_split(tasks: list[dict]) -> tuple[list, list, list, list]:
    """The test tasks' images (as the backend reads them), true masks, labels ("opacity" / "clear")
    and lung masks (None without one), in task order: what ``cam_quality.score`` takes."""
    test = [t for t in tasks if t["split"] == "test"]
    images = cam_quality.load_images([t["image"] for t in test])
    return images, [t["mask"] for t in test], [t["label"] for t in test], [t["lung"] for t in test]


def bench_dataset(strength: float, epochs: int) -> tuple[str, list[dict], Path, Path]:
    """(name, tasks, classifier, lung ROI model) of the lesion benchmark at ``strength``, with
    cam_quality's classifier trained for ``epochs``."""
    classifier = cam_quality.classifier(strength, epochs=epochs)["path"]
    lungs = prelabel_quality.lung_roi_model("bench", strength)["path"]
    return f"bench-strength{strength:g}", lesion_bench_tasks(strength), classifier, lungs


def real_dataset(classifier_epochs: int) -> tuple[str, list[dict], Path, Path]:
    """(name, tasks, classifier, lung ROI model) of the real lesion masks (``real_lesion_tasks``)."""
    tasks = real_lesion_tasks()
    classifier = real_classifier({t["patient"] for t in tasks if t["split"] == "test"}, classifier_epochs)
    return "real", tasks, classifier, prelabel_quality.lung_roi_model("real")["path"]


# ---------------------------------------------------------------- report


def report(results: dict, args, seconds: float) -> str:
    from backend.config import Settings

    defaults = Settings(model_path=Path("x"))
    command = "python benchmarks/segmenter_loop.py --out BENCHMARKS.md" + (" --quick" if args.quick else "")
    lines = [
        MARKERS[0],
        f"## Pre-label quality of the segmenter loop (issue 5){' (quick: meaningless scores)' if args.quick else ''}",
        "",
        f"{datetime.date.today().isoformat()}, {machine()}, load average {load_average()}. "
        f"Command: `.venv/bin/{command}` "
        f"(this run {seconds / 60:.0f} min; U-Nets and classifiers are cached, their training seconds are in the tables).",
        "",
        f"U-Net {args.size}x{args.size} px, filters {','.join(map(str, args.filters))}, BCE + Dice, "
        f"about {args.steps} steps of batch {args.batch_size} per model whatever the train-set size, best validation "
        f"loss kept (validated on a seeded {VAL_TASKS} of the val tasks where there are more). Grad-CAM: the product defaults (`CAM_METHOD={defaults.cam_method}`, "
        f"`CAM_THRESHOLD={defaults.cam_threshold}`); segmenter and fusion: `SEGMENTER_THRESHOLD="
        f"{defaults.segmenter_threshold}`; every source with the default `CAM_SHAPE={defaults.cam_shape}` and the "
        "anatomy prior (`ROI_MODEL_PATH`: the lung model `benchmarks/prelabel_quality.py` trains with `labeler "
        "train-segmenter` on its own train patients' lung masks, which may include this split's test patients: "
        "lung masks only, never lesions); *segmenter, map shape* is the segmenter's map cut as is (`CAM_SHAPE=map`). "
        "Every mask is what the backend would send (regions after hole filling and small-region removal).",
        "",
        "Columns, on the test images: **edit** = the annotator's effort (`models.agreement.edit_fraction`): "
        "(pixels to erase + pixels to paint) / true lesion pixels, mean over the images with a lesion; 1.000 = no "
        "gain over drawing from scratch (the *empty* row), above 1 = worse than nothing, lower is better. Dice / IoU: "
        "means over the images with a lesion (empty prediction = 0). On the clear (normal) test images: fp image = "
        "mean predicted fraction of the image, fp lung = mean predicted pixels / the image's lung pixels (the "
        "prediction need not lie in the lungs, so it can pass 1), fp_any = share with any pre-label (their edit "
        "fraction is 1 or 0 exactly as this). The trivial rows come first: *whole lung* pre-labels each image's lung "
        "mask (clear images included), *empty* nothing; they are scored by the same code as the sources.",
        "",
    ]
    sections = ((f"bench-strength{args.strength:g}", f"(a) lesion benchmark at strength {args.strength:g}, test split",
                 "lung masks: the bench's `lungs/<id>.png`, one per image"),
                ("real", "(b) real radiologist lesion masks, test patients",
                 "lung masks: the manifest's `lung_mask_file` (`lungs/<id>.png`; the seeds' `seed/*__lungs.png`); "
                 "every lesion image has one, and only normal images with one are taken as clear test images"))
    for name, title, lung_text in sections:
        if name not in results:
            continue
        r = results[name]
        s = r["scores"]
        clear = s["empty"]["n_clear"]
        whole = s["whole lung"]
        lines += [
            f"### {title}",
            "",
            f"Tasks: {r['tasks']['train']} train / {r['tasks']['val']} val / {r['tasks']['test']} test "
            f"({r['test_opacity']} test images with a lesion, {clear} clear); {lung_text}"
            + (f"; {r['test_without_lungs']} test images without a lung mask are left out of the whole-lung row "
               f"(scored on {whole['n_opacity']} lesion and {whole['n_clear']} clear images) and of fp lung"
               if r["test_without_lungs"] else "") + ".",
            "",
            "| pre-labeller | corrected masks trained on | Dice | IoU | edit | fp image | fp lung | fp_any | training s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
            _row("*trivial: whole lung*", "–", whole, "–"),
            _row("*trivial: empty*", "–", s["empty"], "–"),
            _row("Grad-CAM (the starting point)", "–", s["gradcam"], "–"),
        ]
        for source in ("segmenter", "segmenter, map shape", "fusion"):
            lines += [_row(source, str(n), s[(source, n)], f"{r['train_seconds'][n]:.0f}") for n in r["counts"]]
        if not clear:
            lines += ["", "No clear test images here: the fp columns are n/a."]
        lines.append("")
    lines.append(MARKERS[1])
    return "\n".join(lines)


def _row(name: str, trained_on: str, s: dict, seconds: str) -> str:
    """One table row: Dice | IoU | edit | fp image | fp lung | fp_any of a ``cam_quality.score``."""
    fmt = (("dice", "{:.3f}"), ("iou", "{:.3f}"), ("edit", "{:.3f}"), ("fp", "{:.4f}"), ("fp_lung", "{:.4f}"),
           ("fp_any", "{:.3f}"))
    cells = " | ".join("n/a" if math.isnan(s[k]) else f.format(s[k]) for k, f in fmt)
    return f"| {name} | {trained_on} | {cells} | {seconds} |"


def machine() -> str:
    """The machine in words: CPU model, usable cores, RAM."""
    facts = hardware()
    return f"{facts['cpu']}, {facts['cores']} cores, {facts['ram_gib']:.0f} GiB"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="Markdown file to write the section into.")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--filters", type=lambda s: [int(v) for v in s.split(",")], default=[16, 32, 64, 128])
    parser.add_argument("--classifier-epochs", type=int, default=20)
    parser.add_argument("--only", choices=("bench", "real"))
    parser.add_argument("--strength", type=float, default=cam_quality.DEFAULT_STRENGTH, help="lesion benchmark strength")
    parser.add_argument("--quick", action="store_true",
                        help=f"a smoke run (meaningless scores): {QUICK}, overriding the options above")
    args = parser.parse_args()
    args.counts, bench_epochs = COUNTS, cam_quality.DEFAULT_EPOCHS
    if args.quick:
        args.counts, args.steps, args.size, args.filters = QUICK["counts"], QUICK["steps"], QUICK["size"], QUICK["filters"]
        args.classifier_epochs, bench_epochs = QUICK["classifier_epochs"], QUICK["bench_epochs"]
    started = time.perf_counter()
    results = {}
    if args.only in (None, "bench"):
        name, tasks, classifier, lungs = bench_dataset(args.strength, bench_epochs)
        results[name] = run_loop(name, tasks, classifier, lungs, args)
    if args.only in (None, "real"):
        name, tasks, classifier, lungs = real_dataset(args.classifier_epochs)
        results[name] = run_loop(name, tasks, classifier, lungs, args)
    text = report(results, args, time.perf_counter() - started)
    print(text)
    if args.out:
        write_section(args.out, *MARKERS, text)


if __name__ == "__main__":
    main()
