"""What to label next, measured: does labelling in Label Studio's "Uncertainty sampling" order
(the task whose pre-label has the LOWEST score, ``Prelabel.confidence``, first) train a better
segmenter than labelling in random order?

A simulated labelling campaign on the data sets of ``benchmarks/segmenter_loop.py`` (the lesion
benchmark at strength 5 and the real radiologist lesion masks, with its patient-level splits; the
pool is the train split's images, "labelling" an image = revealing its true mask), for each seed
and each strategy:

1. round 0: 10 images drawn at random from the pool (the same 10 for both strategies of a seed);
2. a U-Net is trained on the labelled images by ``labeler train-segmenter``'s code
   (``segmenter_loop.train_unet``: 128 px, about the same number of gradient steps whatever the
   number labelled, so that rounds differ by data, not by compute; validated on the val split);
3. it is scored on the test split exactly as the backend pre-labels (``Prelabeler`` with source
   "segmenter", the anatomy prior, the default ``CAM_SHAPE``): mean Dice and mean edit fraction
   (``labeler.agreement.edit_fraction``) over the test images with a lesion;
4. the next 10: "random" = 10 more unlabelled images at random; "uncertainty" = the 10 unlabelled
   images whose pre-label by the current model (the same ``Prelabeler``) has the lowest
   ``Prelabel.confidence``, the score the backend sends to Label Studio;
5. repeat to 40 labelled images or the pool's end.

    python benchmarks/learning_curve.py --out BENCHMARKS.md [--steps 400] [--seeds 0,1] [--quick]

``--quick`` is a smoke run (meaningless scores): 2 rounds, one seed, U-Nets of 20 steps at 64 px
with filters 8,16, and segmenter_loop's quick classifiers. U-Nets are cached under
``.cache/learning-curve/`` by their labelled set; the raw numbers go to
``.cache/learning-curve/results.json`` and the section between ``<!-- learning-curve:start -->``
and ``<!-- learning-curve:end -->``.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["CUDA_VISIBLE_DEVICES"] = ""

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import cam_quality  # noqa: E402  benchmarks/cam_quality.py
import segmenter_loop as loop  # noqa: E402  benchmarks/segmenter_loop.py
from results import load_average, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "learning-curve"
STRATEGIES = ("random", "uncertainty")
ROUND, LIMIT = 10, 40
# segmenter_loop trains 400 steps; 26 U-Nets of 400 steps would take about 2 h on 2 shared cores
# (one on 10 images took 330 s), so the default is 100 steps and 2 seeds: about 30 min.
STEPS, SEEDS = 100, [0, 1]
QUICK = {"steps": 20, "size": 64, "filters": [8, 16], "rounds": 2, "seeds": [0], "bench_epochs": 3, "classifier_epochs": 2}
MARKERS = ("<!-- learning-curve:start -->", "<!-- learning-curve:end -->")


# ---------------------------------------------------------------- what to label next


def next_batch(strategy: str, pool: Sequence, labelled: Sequence, k: int, seed: int,
               confidence: Mapping | None = None) -> list:
    """The ``k`` tasks of ``pool`` (task ids) to label next, never one of ``labelled`` (fewer when
    fewer are left). "random": a draw seeded by ``seed`` and the number labelled (the same call
    gives the same tasks); "uncertainty": the unlabelled tasks with the lowest ``confidence``
    ({task id: score}), ties by task id, as Label Studio's "Uncertainty sampling" serves them."""
    unlabelled = sorted(set(pool) - set(labelled))
    if strategy == "random":
        order = np.random.default_rng([seed, len(labelled)]).permutation(len(unlabelled))
        return [unlabelled[i] for i in order[:k]]
    if strategy == "uncertainty":
        missing = [t for t in unlabelled if confidence is None or t not in confidence]
        if missing:
            raise ValueError(f"no confidence for {len(missing)} unlabelled task(s), e.g. {missing[0]}")
        return sorted(unlabelled, key=lambda t: (confidence[t], t))[:k]
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")


# ---------------------------------------------------------------- training on a labelled set


def labelled_export(export: Path, labelled: Sequence[int], folder: Path) -> Path:
    """A png export holding ``export``'s val tasks and, as its train split, only the ``labelled``
    train tasks (images and masks linked, not copied): what ``train_on_export`` trains on."""
    if (folder / "manifest.csv").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    keep = {str(t) for t in labelled}
    with open(export / "manifest.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        rows = [r for r in reader if r["split"] == "val" or (r["split"] == "train" and r["task_id"] in keep)]
        columns = reader.fieldnames
    if sum(r["split"] == "train" for r in rows) != len(keep):
        raise ValueError(f"{export}: not every labelled task is a train task")
    for sub in ("images", "masks"):
        if not (folder / sub).exists():
            (folder / sub).symlink_to((export / sub).resolve())
    (folder / "labels.json").write_text((export / "labels.json").read_text())
    with open(folder / "manifest.csv.tmp", "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)
    (folder / "manifest.csv.tmp").rename(folder / "manifest.csv")
    return folder


def trained_on(name: str, export: Path, labelled: Sequence[int], seed: int, args) -> tuple[Path, float]:
    """The U-Net trained on exactly ``labelled`` (cached by that set, so that a round both
    strategies share is trained once): (path, training seconds)."""
    settings = f"{args.size}px-{args.steps}steps-b{args.batch_size}-f{'_'.join(map(str, args.filters))}-seed{seed}"
    key = hashlib.sha256(",".join(map(str, sorted(labelled))).encode()).hexdigest()[:10]
    folder = CACHE / name / settings / f"n{len(labelled)}-{key}"
    data = labelled_export(export, labelled, folder / "export")
    out = folder / "unet.keras"
    seconds = loop.train_unet(data, out, len(labelled), args.size, args.steps, args.batch_size, tuple(args.filters), seed)
    return out, seconds


# ---------------------------------------------------------------- the campaign


def campaign(name: str, tasks: list[dict], classifier: Path, roi_model: Path, strategy: str, seed: int,
             test: tuple, pool_images: dict, args, shared: dict) -> list[dict]:
    """One simulated labelling campaign: per round, the number labelled, the test scores of the
    U-Net trained on them, its training seconds and what the round's pick looked like.

    test: ``segmenter_loop.scored_split``'s (images, truths, labels, lungs); pool_images: {task id:
    image} of the train split; shared: {labelled set: round result}, filled across strategies."""
    export = loop.write_export(loop.CACHE / name / "export", tasks)
    images, truths, labels, lungs = test
    pool = sorted(pool_images)
    has_lesion = {t["task_id"]: bool(t["mask"].any()) for t in tasks if t["split"] == "train"}
    labelled = next_batch("random", pool, [], ROUND, seed)
    limit = min(LIMIT, len(pool), ROUND * args.rounds)
    rounds, picked_confidence = [], None
    while True:
        key = (name, seed, tuple(sorted(labelled)))
        if key not in shared:
            path, seconds = trained_on(name, export, labelled, seed, args)
            print(f"  {name} seed {seed} {strategy}: scoring the U-Net on {len(labelled)} labelled", file=sys.stderr)
            masks = cam_quality.masks_of(loop.backend_prelabels(classifier, path, "segmenter", images, roi_model))
            shared[key] = {"path": path, "seconds": seconds,
                           **cam_quality.score(masks, truths, labels, lungs=lungs)}
        result = shared[key]
        rounds.append({"labelled": len(labelled), "dice": result["dice"], "iou": result["iou"], "edit": result["edit"],
                       "fp_any": result["fp_any"], "train_seconds": result["seconds"],
                       "labelled_with_lesion": sum(has_lesion[t] for t in labelled),
                       "picked_confidence": picked_confidence, "labelled_ids": sorted(labelled)})
        if len(labelled) >= limit:
            return rounds
        k = min(ROUND, limit - len(labelled))
        confidence = None
        if strategy == "uncertainty":
            unlabelled = [t for t in pool if t not in set(labelled)]
            prelabels = loop.backend_prelabels(classifier, result["path"], "segmenter",
                                               [pool_images[t] for t in unlabelled], roi_model)
            confidence = {t: p.confidence for t, p in zip(unlabelled, prelabels)}
        picked = next_batch(strategy, pool, labelled, k, seed, confidence)
        picked_confidence = None if confidence is None else {
            "picked_mean": float(np.mean([confidence[t] for t in picked])),
            "pool_mean": float(np.mean(list(confidence.values())))}
        labelled = labelled + picked


def run_dataset(name: str, tasks: list[dict], classifier: Path, roi_model: Path, args) -> dict:
    """Every seed's campaigns of every strategy on one data set, and the trivial rows."""
    test = loop.scored_split(tasks)
    train = [t for t in tasks if t["split"] == "train"]
    pool_images = dict(zip([t["task_id"] for t in train], cam_quality.load_images([t["image"] for t in train])))
    shared: dict = {}
    runs = {seed: {s: campaign(name, tasks, classifier, roi_model, s, seed, test, pool_images, args, shared)
                   for s in STRATEGIES} for seed in args.seeds}
    _, truths, labels, lungs = test
    return {"runs": runs, "trivial": cam_quality.trivial_scores(truths, labels, lungs),
            "pool": len(train), "pool_with_lesion": sum(bool(t["mask"].any()) for t in train),
            "val": min(loop.VAL_TASKS, sum(t["split"] == "val" for t in tasks)), "test_opacity": sum(label == "opacity" for label in labels),
            "test_clear": sum(label != "opacity" for label in labels)}


# ---------------------------------------------------------------- report


def mean_curve(runs: dict, strategy: str) -> dict[int, dict]:
    """{labelled count: {dice, edit, with_lesion}} averaged over the seeds that reached it."""
    curve: dict[int, list] = {}
    for by_strategy in runs.values():
        for r in by_strategy[strategy]:
            curve.setdefault(r["labelled"], []).append(r)
    return {n: {k: float(np.mean([r[src] for r in rs])) for k, src in
                (("dice", "dice"), ("edit", "edit"), ("with_lesion", "labelled_with_lesion"))}
            for n, rs in sorted(curve.items())}


def report(results: dict, skipped: dict, args, seconds: float) -> str:
    from backend.config import Settings

    defaults = Settings(model_path=Path("x"))
    command = "python benchmarks/learning_curve.py --out BENCHMARKS.md" + (" --quick" if args.quick else "") \
        + ("" if args.steps == STEPS or args.quick else f" --steps {args.steps}") \
        + ("" if args.seeds == SEEDS or args.quick else f" --seeds {','.join(map(str, args.seeds))}")
    lines = [
        MARKERS[0],
        f"## Learning curve: random vs uncertainty order (issue 14){' (quick: meaningless scores)' if args.quick else ''}",
        "",
        f"{datetime.date.today().isoformat()}, {loop.machine()}, load average {load_average()}. "
        f"Command: `.venv/bin/{command}` (this run {seconds / 60:.0f} min, U-Nets cached by labelled set; "
        "raw numbers in `.cache/learning-curve/results.json`).",
        "",
        "A simulated labelling campaign on `benchmarks/segmenter_loop.py`'s data sets and splits: the pool is the "
        f"train split, labelling an image reveals its true mask. Round 0 labels {ROUND} pool images drawn at random "
        f"(the same {ROUND} for both orders of a seed); after each round a U-Net is trained on the labelled images with "
        f"`labeler train-segmenter`'s code ({args.size}x{args.size} px, filters {','.join(map(str, args.filters))}, "
        f"about {args.steps} steps of batch {args.batch_size} whatever the number labelled, so that rounds differ by "
        "data, not by compute; validated on the val split, best validation loss kept; the campaign's seed also seeds "
        "the U-Net"
        + ("" if args.quick or args.steps >= 400 else
           f"; {args.steps} steps, not segmenter_loop's 400, to keep {len(args.seeds)} seed(s) near 30 min on 2 cores: "
           "one 400-step U-Net on 10 images took 330 s here, and a campaign trains up to 13 per seed")
        + "), and the next "
        f"{ROUND} are picked: **random** = {ROUND} more unlabelled pool images at random; **uncertainty** = the {ROUND} "
        "unlabelled pool images whose pre-label by the current U-Net has the lowest `Prelabel.confidence` (1 - mean "
        "pixel entropy over the lungs: the score the backend sends and Label Studio's *Uncertainty sampling* serves "
        f"lowest first), to {min(LIMIT, ROUND * args.rounds)} labelled or the pool's end. Seeds "
        f"{', '.join(map(str, args.seeds))}; the cells are their means, per seed below each table.",
        "",
        "Each U-Net is scored on the test split exactly as the backend pre-labels: source `segmenter`, "
        f"`SEGMENTER_THRESHOLD={defaults.segmenter_threshold}`, the anatomy prior (segmenter_loop's lung ROI model) and "
        f"the default `CAM_SHAPE={defaults.cam_shape}`. **Dice** = mean over the test images with a lesion (empty "
        "prediction = 0), higher is better; **edit** = mean `labeler.agreement.edit_fraction` over them ((pixels to "
        "erase + pixels to paint) / true lesion pixels; 1.000 = drawing from scratch), lower is better. The trivial "
        "rows are scored by the same code on the same test images. *lesion imgs* = how many of the labelled images "
        "have a lesion (random / uncertainty).",
        "",
    ]
    titles = {f"bench-strength{args.strength:g}": f"(a) lesion benchmark at strength {args.strength:g}",
              "real": "(b) real radiologist lesion masks"}
    for name, title in titles.items():
        if name in skipped:
            lines += [f"### {title}", "", f"Skipped: {skipped[name]}.", ""]
        if name not in results:
            continue
        r = results[name]
        curves = {s: mean_curve(r["runs"], s) for s in STRATEGIES}
        trivial = r["trivial"]
        lines += [
            f"### {title}",
            "",
            f"Pool {r['pool']} train images ({r['pool_with_lesion']} with a lesion), {r['val']} val, test "
            f"{r['test_opacity']} images with a lesion and {r['test_clear']} clear.",
            "",
            "| labelled images | random Dice / edit | uncertainty Dice / edit | lesion imgs |",
            "|---:|---:|---:|---:|",
            f"| *trivial: whole lung* | {trivial['whole lung']['dice']:.3f} / {trivial['whole lung']['edit']:.3f} | – | – |",
            f"| *trivial: empty* | {trivial['empty']['dice']:.3f} / {trivial['empty']['edit']:.3f} | – | – |",
        ]
        for n in sorted(set(curves["random"]) | set(curves["uncertainty"])):
            cells = [f"{curves[s][n]['dice']:.3f} / {curves[s][n]['edit']:.3f}" if n in curves[s] else "–" for s in STRATEGIES]
            lesions = " / ".join(f"{curves[s][n]['with_lesion']:.1f}".rstrip("0").rstrip(".") if n in curves[s] else "–"
                                 for s in STRATEGIES)
            lines.append(f"| {n} | {cells[0]} | {cells[1]} | {lesions} |")
        lines.append("")
        for seed, by_strategy in r["runs"].items():
            parts = []
            for s in STRATEGIES:
                parts.append(f"{s} " + ", ".join(f"{x['labelled']}: {x['dice']:.3f} / {x['edit']:.3f}" for x in by_strategy[s]))
            lines.append(f"Seed {seed} (Dice / edit): " + "; ".join(parts) + ".")
        lines.append("")
    lines += [reading(results, titles), "", MARKERS[1]]
    return "\n".join(lines)


def order_effect(runs: dict) -> dict[int, tuple[float, float]]:
    """{seed: (mean Dice gain, mean edit gain)} of the uncertainty order over the random one, over
    the rounds after round 0 that both reached (gain = uncertainty - random for Dice, random -
    uncertainty for edit: positive = uncertainty better); NaN where there is no such round."""
    effect = {}
    for seed, by_strategy in runs.items():
        random = {r["labelled"]: r for r in by_strategy["random"][1:]}
        pairs = [(r, random[r["labelled"]]) for r in by_strategy["uncertainty"][1:] if r["labelled"] in random]
        effect[seed] = (float(np.mean([u["dice"] - r["dice"] for u, r in pairs])) if pairs else float("nan"),
                        float(np.mean([r["edit"] - u["edit"] for u, r in pairs])) if pairs else float("nan"))
    return effect


def reading(results: dict, titles: dict) -> str:
    """The result in two sentences, from the numbers: per data set the uncertainty order's mean gain
    in Dice and edit fraction over the rounds after round 0, then whether every seed agrees."""
    numbers, verdicts = [], []
    for name, title in titles.items():
        gains = [g for g in order_effect(results[name]["runs"]).values() if not math.isnan(g[0])] if name in results else []
        if not gains:
            continue
        tag = title.split(" ", 1)[0]
        dice, edit = float(np.mean([g[0] for g in gains])), float(np.mean([g[1] for g in gains]))
        numbers.append(f"{dice:+.3f} Dice and {-edit:+.3f} edit fraction on {tag}")
        if all(g[0] > 0 and g[1] > 0 for g in gains):
            verdicts.append(f"on {tag} uncertainty order is better in both scores for every seed")
        elif all(g[0] < 0 and g[1] < 0 for g in gains):
            verdicts.append(f"on {tag} uncertainty order is worse than random in both scores for every seed")
        else:
            verdicts.append(f"on {tag} it is not consistently better than random order (the seeds or the two scores disagree)")
    if not numbers:
        return "Reading: no round after round 0, nothing to compare."
    return (f"Reading: over the rounds after round 0, labelling in uncertainty order instead of random order changes "
            f"the test scores by {' and '.join(numbers)} on average (edit: lower is better). "
            f"{'; '.join(verdicts).capitalize()}.")


def _jsonable(results: dict) -> dict:
    """The results without model paths, NaN as null."""
    def clean(value):
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items() if k != "path"}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, (np.floating, np.integer)):
            return clean(value.item())
        return value
    return clean(results)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="Markdown file to write the section into.")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=STEPS, help="gradient steps per U-Net, whatever the number labelled")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--filters", type=lambda s: [int(v) for v in s.split(",")], default=[16, 32, 64, 128])
    parser.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=SEEDS)
    parser.add_argument("--classifier-epochs", type=int, default=20, help="the real data's classifier (segmenter_loop's)")
    parser.add_argument("--only", choices=("bench", "real"))
    parser.add_argument("--strength", type=float, default=cam_quality.DEFAULT_STRENGTH, help="lesion benchmark strength")
    parser.add_argument("--quick", action="store_true",
                        help=f"a smoke run (meaningless scores): {QUICK}, overriding the options above")
    args = parser.parse_args()
    args.rounds, bench_epochs = math.ceil(LIMIT / ROUND), cam_quality.DEFAULT_EPOCHS
    if args.quick:
        args.steps, args.size, args.filters = QUICK["steps"], QUICK["size"], QUICK["filters"]
        args.rounds, args.seeds = QUICK["rounds"], QUICK["seeds"]
        bench_epochs, args.classifier_epochs = QUICK["bench_epochs"], QUICK["classifier_epochs"]
    started = time.perf_counter()
    results, skipped = {}, {}
    datasets = {f"bench-strength{args.strength:g}": (
                    "bench", cam_quality.BENCH_TOOL / "make_lesion_bench.py",
                    lambda: loop.bench_dataset(args.strength, bench_epochs)),
                "real": ("real", loop.CXR / "lesions" / "annotations.csv",
                         lambda: loop.real_dataset(args.classifier_epochs))}
    for key, (kind, needed, load) in datasets.items():
        if args.only not in (None, kind):
            continue
        if not needed.is_file():
            skipped[key] = f"its data is not there ({needed.relative_to(ROOT.parent)} is missing)"
            print(f"skipping {key}: {skipped[key]}", file=sys.stderr)
            continue
        name, tasks, classifier, lungs = load()
        results[name] = run_dataset(name, tasks, classifier, lungs, args)
    seconds = time.perf_counter() - started
    CACHE.mkdir(parents=True, exist_ok=True)
    raw = {"date": datetime.date.today().isoformat(), "quick": args.quick, "seconds": round(seconds, 1),
           "settings": {"size": args.size, "steps": args.steps, "batch_size": args.batch_size, "filters": args.filters,
                        "seeds": args.seeds, "round": ROUND, "limit": min(LIMIT, ROUND * args.rounds)},
           "skipped": skipped, "datasets": results}
    (CACHE / ("results-quick.json" if args.quick else "results.json")).write_text(json.dumps(_jsonable(raw), indent=1) + "\n")
    text = report(results, skipped, args, seconds)
    print(text)
    if args.out:
        write_section(args.out, *MARKERS, text)


if __name__ == "__main__":
    main()
