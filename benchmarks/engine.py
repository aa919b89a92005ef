"""Speed of the Grad-CAM pre-labelling engine on the CPU, side by side with its baselines.

Everything runs on the reference article's classifier (``models.classifiers.build_inception_classifier``:
InceptionV3 backbone nested in a functional model, 256x256x3, random weights, target layer mixed10).
Contenders that are compared take turns within one process, repeat by repeat, and ratios are medians
of back-to-back pairs, so that a busy spell on a shared machine slows both sides alike; each part
runs in a fresh process, so that its peak RSS is its own:

1. images/s of a compiled forward pass (``tf.function`` of ``model(x, training=False)`` with a None
   batch dimension, the fair baseline; ``model.predict`` for reference) against ``GradCam.compute``
   ("gradcam", "guided") at batch sizes 1, 8 and 32;
2. the reference article's per-image code (a ``keras.Model`` rebuilt for every image, an eager
   ``GradientTape``, guided weights, ``cv2.resize``, ReLU, min-max) against the engine at batch 32;
3. tf-keras-vis ``Gradcam`` against the engine at batch 16, on a flat InceptionV3 (no nested
   backbone) when tf-keras-vis cannot take the nested one, with the peak RSS growth of each;
4. post-processing of one 1024x1024 and one 2048x2048 image (heatmap resize, regions, Label Studio
   results) against the model's own time per image.

Figures are medians over repeats after warm-up, on the same seeded random inputs and weights.

    python benchmarks/engine.py --out BENCHMARKS.md [--repeats N] [--quick]

The results are printed and written between ``<!-- engine:start -->`` and ``<!-- engine:end -->``
in the output file. ``--quick`` is a smoke run of about two minutes.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path
from statistics import median

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
os.environ["CUDA_VISIBLE_DEVICES"] = ""

import numpy as np

from results import hardware, load_average, write_section  # benchmarks/results.py

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

START, END = "<!-- engine:start -->", "<!-- engine:end -->"
RESULT = "ENGINE-BENCH-RESULT "
SIZE = 256
LAYER = "mixed10"
BATCHES = (1, 8, 32)
TFKV_BATCH = 16
METHODS = ("gradcam", "guided")
POST_SIZES = (1024, 2048)
HEADER = """# Benchmarks

Speed of the Grad-CAM pre-labelling engine on the CPU (see `benchmarks/engine.py` for what is
measured and how). Reproduce with:

    python benchmarks/engine.py --out BENCHMARKS.md
"""


def settings(quick: bool, repeats: int | None) -> dict:
    """How much work each part does; ``--quick`` trims it to a smoke run."""
    if quick:
        return {"repeats": repeats or 1, "images": 32, "article_per_repeat": 3, "post_repeats": 3, "warmup": 1}
    return {"repeats": repeats or 5, "images": 32, "article_per_repeat": 3, "post_repeats": 10, "warmup": 2}


# ---------------------------------------------------------------- workers (one process each)


def inputs(count: int) -> np.ndarray:
    return np.random.default_rng(0).random((count, SIZE, SIZE, 3), dtype=np.float32)


def nested_model():
    import keras

    from models.classifiers import build_inception_classifier

    keras.utils.set_random_seed(0)
    return build_inception_classifier(input_size=(SIZE, SIZE))[0]


def flat_model():
    """The same classifier as one functional graph (no nested backbone)."""
    import keras

    keras.utils.set_random_seed(0)
    base = keras.applications.InceptionV3(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(base.output)
    outputs = keras.layers.Dense(3, activation="softmax", name="predictions")(pooled)
    return keras.Model(base.input, outputs, name="inception_flat")


def memory_mib() -> dict:
    """Current and peak resident set size of this process, MiB."""
    status = Path("/proc/self/status").read_text()
    return {key: int(re.search(rf"^{key}:\s+(\d+)", status, re.M).group(1)) / 1024 for key in ("VmRSS", "VmHWM")}


def peak_growth(before: dict) -> float:
    return max(0.0, memory_mib()["VmHWM"] - before["VmRSS"])


def chunks(x: np.ndarray, batch: int):
    return (x[i : i + batch] for i in range(0, len(x), batch))


def seconds(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def interleaved(contenders: dict, x: np.ndarray, batches, repeats: int, warmup: int) -> dict:
    """Seconds per repeat of every "name@batch", the contenders taking turns within each repeat."""
    for batch in batches:
        for run in contenders.values():
            for _ in range(warmup):
                run(x[:batch], batch)
    times = {f"{name}@{batch}": [] for name in contenders for batch in batches}
    for _ in range(repeats):
        for batch in batches:
            for name, run in contenders.items():
                times[f"{name}@{batch}"].append(seconds(lambda: run(x, batch)))
    return times


def paired_ratio(times: dict, name: str, baseline: str) -> float:
    """Median over repeats of baseline time / name time, each pair measured back to back (so a busy
    spell on a shared machine slows both sides of a pair alike)."""
    return median(b / t for t, b in zip(times[name], times[baseline]))


def compiled_forward(model):
    import tensorflow as tf

    return tf.function(
        lambda images: model(images, training=False),
        input_signature=[tf.TensorSpec((None, SIZE, SIZE, 3), tf.float32)],
    )


def engine_worker(cfg: dict) -> dict:
    """Part 1 (forward vs Grad-CAM at each batch size) and part 4 (post-processing)."""
    import tensorflow as tf

    from explain.gradcam import GradCam

    model = nested_model()
    x = inputs(cfg["images"])
    forward = compiled_forward(model)
    cams = {method: GradCam(model, method=method) for method in METHODS}

    def run_forward(images, batch):
        for chunk in chunks(images, batch):
            forward(tf.constant(chunk)).numpy()

    def run_cam(method):
        return lambda images, batch: [cams[method].compute(chunk) for chunk in chunks(images, batch)]

    contenders = {"forward": run_forward, **{method: run_cam(method) for method in METHODS}}
    contenders["predict"] = lambda images, batch: model.predict(images, batch_size=batch, verbose=0)
    times = interleaved(contenders, x, BATCHES, cfg["repeats"], cfg["warmup"])
    speeds = {key: len(x) / median(t) for key, t in times.items()}
    ratios = {f"{m}@{b}": paired_ratio(times, f"{m}@{b}", f"forward@{b}") for m in METHODS for b in BATCHES}
    heatmap = cams["gradcam"].compute(x[:1])[2][0]
    post = {size: postprocess(heatmap, size, cfg["post_repeats"]) for size in POST_SIZES}
    return {"speeds": speeds, "ratios": ratios, "post": post, "heatmap_shape": list(heatmap.shape)}


def postprocess(heatmap: np.ndarray, size: int, repeats: int) -> dict:
    """ms per stage for one size x size image, from a low-resolution heatmap to Label Studio results."""
    from explain.labelstudio.results import prelabel_results
    from explain.prelabel import ClassRegions, Prelabel
    from explain.regions import resize_heatmap
    from explain.regions import extract_regions

    stages = {"resize": [], "regions": [], "results": []}
    for _ in range(repeats):
        start = time.perf_counter()
        full = resize_heatmap(heatmap, size, size)
        resized = time.perf_counter()
        regions = extract_regions(full)
        found = time.perf_counter()
        prelabel = Prelabel(size, size, {"opacity": 0.9, "normal": 0.1}, (ClassRegions("opacity", 0.9, heatmap, regions),))
        results = prelabel_results(prelabel)
        done = time.perf_counter()
        for stage, seconds_taken in zip(stages, (resized - start, found - resized, done - found)):
            stages[stage].append(seconds_taken)
    out = {stage: 1000 * median(t) for stage, t in stages.items()}
    totals = [sum(parts) for parts in zip(*stages.values())]
    return {**out, "total": 1000 * median(totals), "region_count": len(regions), "result_count": len(results)}


def article_heatmap(model, image: np.ndarray) -> np.ndarray:
    """The reference article's per-image guided Grad-CAM, with the backbone's layer reached through
    the nested model: a new ``keras.Model`` for every image, an eager tape, ``cv2.resize``."""
    import cv2
    import keras
    import tensorflow as tf

    inner = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    predictions = inner.output
    for name in ("pool", "dropout", "predictions"):
        predictions = model.get_layer(name)(predictions)
    grad_model = keras.Model(inner.inputs, [inner.get_layer(LAYER).output, predictions])
    with tf.GradientTape() as tape:
        conv_outputs, predictions = grad_model(tf.cast(image, tf.float32))
        loss = predictions[:, tf.argmax(predictions[0])]
    grads = tape.gradient(loss, conv_outputs)
    gate_f = tf.cast(conv_outputs > 0, "float32")
    gate_r = tf.cast(grads > 0, "float32")
    guided_grads = gate_f * gate_r * grads
    weights = tf.reduce_mean(guided_grads[0], axis=(0, 1))
    cam = tf.reduce_sum(tf.multiply(weights, conv_outputs[0]), axis=-1)
    heatmap = np.maximum(cv2.resize(cam.numpy(), (image.shape[2], image.shape[1])), 0)
    return (heatmap - heatmap.min()) / (heatmap.max() - heatmap.min() + 1e-8)


def article_worker(cfg: dict) -> dict:
    """Part 2: the article's code, one image at a time, taking turns with the engine at batch 32.

    The article's peak RSS growth is read before the engine is built."""
    from explain.gradcam import GradCam

    model = nested_model()
    x = inputs(cfg["images"])
    per_repeat = cfg["article_per_repeat"]
    before = memory_mib()
    article_heatmap(model, x[:1])

    def article(r):
        for n in range(r * per_repeat, (r + 1) * per_repeat):
            article_heatmap(model, x[(n + 1) % len(x)][None])

    first = seconds(lambda: article(0))
    growth = peak_growth(before)
    cam = GradCam(model, method="guided", batch_size=32)
    for _ in range(cfg["warmup"]):
        cam.compute(x)
    times = {"article": [first], "engine": [seconds(lambda: cam.compute(x))]}
    for r in range(1, cfg["repeats"]):
        times["article"].append(seconds(lambda: article(r)))
        times["engine"].append(seconds(lambda: cam.compute(x)))
    return {
        "images_per_s": per_repeat / median(times["article"]),
        "engine_images_per_s": len(x) / median(times["engine"]),
        "speedup": median(a / per_repeat / (e / len(x)) for a, e in zip(times["article"], times["engine"])),
        "images": per_repeat * cfg["repeats"],
        "peak_growth_mib": growth,
    }


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split()).replace("`", "'")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def class_indices(count: int) -> np.ndarray:
    return np.arange(count, dtype=np.int32) % 3


def build(kind: str):
    return nested_model() if kind == "nested" else flat_model()


def tfkv_worker(cfg: dict) -> dict:
    """Part 3: tf-keras-vis ``Gradcam`` at batch 16, with and without its upsampling to the input size,
    taking turns with the engine on the same model; tf-keras-vis's peak RSS growth is read before
    the engine is built."""
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    from explain.gradcam import GradCam

    model = build(cfg["model"])
    x, indices = inputs(TFKV_BATCH), class_indices(TFKV_BATCH)
    before = memory_mib()
    try:
        gradcam = Gradcam(model, model_modifier=ReplaceToLinear(), clone=True)
        score = CategoricalScore(indices.tolist())
        runs = {
            name: (lambda expand=expand: gradcam(score, x, penultimate_layer=LAYER, expand_cam=expand))
            for name, expand in (("expanded", True), ("low-res", False))
        }
        for run in runs.values():
            run()
    except Exception as error:  # any failure of the library is a result, not a crash
        return {"error": one_line(f"{type(error).__name__}: {error}")}
    growth = peak_growth(before)
    cam = GradCam(model, layer=LAYER, method="gradcam", batch_size=TFKV_BATCH)
    runs["engine"] = lambda: cam.compute(x, indices)
    for _ in range(cfg["warmup"]):
        runs["engine"]()
    times = {name: [] for name in runs}
    for _ in range(cfg["repeats"]):
        for name, run in runs.items():
            times[name].append(seconds(run))
    return {
        "speeds": {name: TFKV_BATCH / median(t) for name, t in times.items()},
        "speedups": {name: paired_ratio(times, "engine", name) for name in ("expanded", "low-res")},
        "peak_growth_mib": growth,
    }


def ours_worker(cfg: dict) -> dict:
    """Part 3: the engine alone at batch 16 on the model tf-keras-vis ran on, for its own peak RSS."""
    from explain.gradcam import GradCam

    model = build(cfg["model"])
    x, indices = inputs(TFKV_BATCH), class_indices(TFKV_BATCH)
    before = memory_mib()
    cam = GradCam(model, layer=LAYER, method="gradcam", batch_size=TFKV_BATCH)
    for _ in range(cfg["warmup"]):
        cam.compute(x, indices)
    return {"peak_growth_mib": peak_growth(before)}


WORKERS = {"engine": engine_worker, "article": article_worker, "tfkv": tfkv_worker, "ours": ours_worker}


# ---------------------------------------------------------------- orchestration


def spawn(worker: str, cfg: dict) -> dict:
    """Run one worker in a fresh Python process; its result, or the error it died with."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", worker, "--config", json.dumps(cfg)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    if done.returncode or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        result = {"error": one_line(f"worker {worker} failed: {tail[0]}")}
    else:
        result = json.loads(lines[-1][len(RESULT) :])
    result["wall_s"] = time.perf_counter() - started
    print(f"  {worker} ({cfg.get('model', 'nested')}): {result['wall_s']:.0f} s", file=sys.stderr)
    return result


def run_all(cfg: dict) -> dict:
    results = {"engine": spawn("engine", cfg), "article": spawn("article", cfg)}
    tfkv = spawn("tfkv", {**cfg, "model": "nested"})
    results["tfkv_nested_error"] = tfkv.get("error")
    model = "nested"
    if "error" in tfkv:
        model = "flat"
        tfkv = spawn("tfkv", {**cfg, "model": model})
    results.update(tfkv=tfkv, tfkv_model=model, ours=spawn("ours", {**cfg, "model": model}))
    return results


def machine() -> dict:
    return {
        **hardware(),
        "python": platform.python_version(),
        "tensorflow": version("tensorflow"),
        "keras": version("keras"),
        "tf_keras_vis": version("tf-keras-vis"),
    }


# ---------------------------------------------------------------- report


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def fmt(value: float, digits: int = 1) -> str:
    return f"{value:.{digits}f}"


def engine_table(engine: dict) -> list[str]:
    speeds, ratios = engine["speeds"], engine["ratios"]
    lines = [
        "| batch | forward `tf.function` img/s | `model.predict` img/s | gradcam img/s | gradcam / forward "
        "| guided img/s | guided / forward |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for b in BATCHES:
        cells = [str(b), fmt(speeds[f"forward@{b}"]), fmt(speeds[f"predict@{b}"])]
        for method in METHODS:
            cells += [fmt(speeds[f"{method}@{b}"]), fmt(ratios[f"{method}@{b}"], 2)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def part1(engine: dict, cfg: dict) -> tuple[list[str], list[str]]:
    title = "### 1. Grad-CAM against the forward pass (nested InceptionV3)"
    if "error" in engine:
        return [title, "", f"Failed: `{engine['error']}`"], ["Grad-CAM / forward >= 0.9: not measured"]
    worst, ratio = min(engine["ratios"].items(), key=lambda kv: kv[1])
    lines = [
        title,
        "",
        f"Each repeat pushes the same {cfg['images']} images through every contender in turn, in chunks of the "
        f"batch size; images/s from the median of {cfg['repeats']} repeats after warm-up. The ratios are the median "
        "over repeats of each back-to-back pair, which cancels most of the drift of a shared machine. Grad-CAM "
        "returns the class probabilities too, so it replaces the forward pass rather than adding to it.",
        "",
        *engine_table(engine),
    ]
    method, batch = worst.split("@")
    aim = f"Grad-CAM / forward >= 0.9 at every batch size: lowest {ratio:.2f} ({method}, batch {batch}) — {verdict(ratio >= 0.9)}"
    return lines, [aim]


def part2(results: dict) -> tuple[list[str], list[str]]:
    article = results["article"]
    title = "### 2. Against the article's per-image code (guided Grad-CAM, nested InceptionV3)"
    if "error" in article:
        return [title, "", f"Failed: `{article['error']}`"], ["engine / article >= 10x: not measured"]
    ours, speedup = article["engine_images_per_s"], article["speedup"]
    lines = [
        title,
        "",
        "The article's code rebuilt `Model(inputs, [conv_layer.output, model.output])` for every image and ran an "
        "eager `GradientTape` on the softmax output; with the backbone nested, the per-image model is "
        "`Model(backbone.inputs, [backbone.get_layer('mixed10').output, head(backbone.output)])`. Its time includes "
        "`cv2.resize` to 256x256, ReLU and min-max. The two take turns in one process: each of the "
        f"{results['cfg']['repeats']} repeats runs {results['cfg']['article_per_repeat']} images through the article's "
        f"code, then 32 images through the engine ({article['images']} article images in all, after one warm-up image).",
        "",
        "| contender | img/s | ms/image | peak RSS growth (MiB) |",
        "|---|---:|---:|---:|",
        f"| article, one image at a time | {fmt(article['images_per_s'], 2)} | {fmt(1000 / article['images_per_s'], 0)} "
        f"| {fmt(article['peak_growth_mib'], 0)} |",
        f"| engine, `GradCam(method='guided')`, batch 32 | {fmt(ours)} | {fmt(1000 / ours, 0)} | — |",
        "",
        f"Speedup (median of the paired repeats): **{speedup:.1f}x**.",
    ]
    return lines, [f"engine / article >= 10x at batch 32: {speedup:.1f}x — {verdict(speedup >= 10)}"]


def part3(results: dict) -> tuple[list[str], list[str]]:
    tfkv, ours, model = results["tfkv"], results["ours"], results["tfkv_model"]
    lines = [f"### 3. Against tf-keras-vis {results['machine']['tf_keras_vis']} `Gradcam`, batch {TFKV_BATCH}", ""]
    if results["tfkv_nested_error"]:
        lines += [
            "tf-keras-vis cannot take the nested-backbone classifier: "
            "`Gradcam(model, model_modifier=ReplaceToLinear(), clone=True)` then a call fails with "
            f"`{results['tfkv_nested_error']}`. Both contenders therefore run on a flat equivalent "
            "(`InceptionV3(include_top=False)` -> `GlobalAveragePooling2D` -> `Dense(3, softmax)` in one graph, "
            "same seeded weights).",
            "",
        ]
    if "error" in tfkv:
        lines.append(f"tf-keras-vis could not run on the {model} model either: `{tfkv['error']}`")
        return lines, ["engine / tf-keras-vis >= 3x at batch 16: not measured (tf-keras-vis failed)"]
    speeds, speedups = tfkv["speeds"], tfkv["speedups"]
    ours_growth = fmt(ours["peak_growth_mib"], 0) if "error" not in ours else f"failed: `{ours['error']}`"
    lines += [
        f"Both differentiate the logit (`ReplaceToLinear` / `score='logit'`) of the same classes at `{LAYER}`, taking "
        f"turns in one process; images/s from the median of {results['cfg']['repeats']} calls after warm-up, speedups "
        "the median of the back-to-back pairs. Peak RSS growth (the peak resident set, VmHWM, minus the resident set "
        "once the model was built) comes from a separate process per contender.",
        "",
        "| contender | img/s | engine speedup | peak RSS growth (MiB) |",
        "|---|---:|---:|---:|",
        f"| tf-keras-vis, `expand_cam=True` (default: maps upsampled to 256x256) | {fmt(speeds['expanded'])} "
        f"| {speedups['expanded']:.1f}x | {fmt(tfkv['peak_growth_mib'], 0)} |",
        f"| tf-keras-vis, `expand_cam=False` (6x6 maps, like the engine) | {fmt(speeds['low-res'])} "
        f"| {speedups['low-res']:.1f}x | (same as above) |",
        f"| engine, `GradCam(method='gradcam', batch_size={TFKV_BATCH})` | {fmt(speeds['engine'])} | 1.0x | {ours_growth} |",
    ]
    speedup = speedups["low-res"]
    return lines, [f"engine / tf-keras-vis >= 3x at batch 16 (like for like, 6x6 maps): {speedup:.1f}x — {verdict(speedup >= 3)}"]


def part4(engine: dict, cfg: dict) -> tuple[list[str], list[str]]:
    if "error" in engine:
        return [], ["post-processing < model time: not measured"]
    model_ms = 1000 / engine["speeds"]["forward@32"]
    cam_ms = 1000 / engine["speeds"]["gradcam@32"]
    h, w = engine["heatmap_shape"]
    lines = [
        "### 4. Post-processing per image against the model's time per image",
        "",
        f"From the engine's real {h}x{w} Grad-CAM map of one image: `resize_heatmap` to the full size, "
        "`extract_regions` (default settings), then `prelabel_results` (one choice, and a brush RLE and a polygon per "
        f"region); median of {cfg['post_repeats']} repeats, ms. Model time: forward pass at batch 32, "
        f"{model_ms:.0f} ms/image (Grad-CAM at batch 32: {cam_ms:.0f} ms/image).",
        "",
        "| image | resize | regions | Label Studio results | total | regions found | total / model time |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    aims = []
    for size in POST_SIZES:
        p = engine["post"][str(size)]
        lines.append(
            f"| {size}x{size} | {fmt(p['resize'])} | {fmt(p['regions'])} | {fmt(p['results'])} | {fmt(p['total'])} "
            f"| {p['region_count']} | {p['total'] / model_ms:.2f} |"
        )
        aims.append(
            f"post-processing {size}x{size} < model time per image: {p['total']:.0f} ms vs {model_ms:.0f} ms "
            f"— {verdict(p['total'] < model_ms)}"
        )
    return lines, aims


def report(results: dict, cfg: dict, quick: bool) -> str:
    m = results["machine"]
    lines = [
        START,
        f"## Engine benchmark{' (quick)' if quick else ''} — {datetime.date.today().isoformat()}",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']:.1f} GiB RAM, CPU only; load average "
        f"{results['load'][0]} at the start, {results['load'][1]} at the end. Python {m['python']}, "
        f"TensorFlow {m['tensorflow']}, Keras {m['keras']}, tf-keras-vis {m['tf_keras_vis']}.",
        f"Model: `build_inception_classifier()` (InceptionV3 nested in a functional model, {SIZE}x{SIZE}x3, random "
        f"seeded weights), target layer `{LAYER}`. Command: `python benchmarks/engine.py --out BENCHMARKS.md"
        f"{' --quick' if quick else ''}` ({results['total_s'] / 60:.1f} min).",
        "",
    ]
    aims = []
    for section, found in (part1(results["engine"], cfg), part2(results), part3(results), part4(results["engine"], cfg)):
        lines += [*section, ""] if section else []
        aims += found
    lines += ["### Aims", "", *[f"- {aim}" for aim in aims], "", END]
    return "\n".join(lines) + "\n"


def write(path: Path, section: str) -> None:
    """Replace the marked section of ``path``, or add it (with a header when the file is new)."""
    write_section(path, START, END, section, HEADER)


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"), help="markdown file to write the results into")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per figure (default 5, quick 1)")
    parser.add_argument("--quick", action="store_true", help="smoke run of about two minutes")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse(argv)
    if args.worker:
        print(RESULT + json.dumps(WORKERS[args.worker](json.loads(args.config))))
        return
    if args.repeats is not None and args.repeats < 1:
        raise SystemExit("--repeats must be >= 1")
    cfg = settings(args.quick, args.repeats)
    started, load = time.perf_counter(), load_average()
    results = run_all(cfg)
    results.update(cfg=cfg, machine=machine(), load=(load, load_average()), total_s=time.perf_counter() - started)
    section = report(results, cfg, args.quick)
    write(args.out, section)
    print(section)


if __name__ == "__main__":
    main()
