"""``labeler prelabel`` against projects of growing size: the cost of a pre-labelled batch and of a
rerun with nothing to do, next to the Label Studio requests the earlier code made.

One real Label Studio (``labeler.studio``), one project grown to each size in turn: tasks
imported in bulk (all pointing at one 64 px image in the document root, so that the model is not
the cost), every task but ``PENDING`` given a prediction of the model's version in bulk. Then, per
size:

- ``prelabel_project`` of the ``PENDING`` tasks (batches of 16): seconds per batch (the loop,
  model included) and the whole call;
- a rerun with nothing to do (the whole call, model loading included);
- what the earlier code did for the same jobs, measured with the same SDK: listing every
  prediction and every task with ``fields="all"`` (its start-up), and posting 16 predictions with
  one ``projects.import_predictions`` (its per-batch post) against 16 ``predictions.create``.

    python benchmarks/prelabel_scale.py --out BENCHMARKS.md [--sizes 1000,4000,16000] [--quick]

The results are printed and written between ``<!-- prelabel-scale:start -->`` and
``<!-- prelabel-scale:end -->``. ``--quick`` (500 and 2,000 tasks) takes about 2 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from results import hardware, load_average, write_section  # noqa: E402  benchmarks/results.py

START, END = "<!-- prelabel-scale:start -->", "<!-- prelabel-scale:end -->"
PENDING = 64
BATCH = 16
CLASSES = ("covid", "normal", "pneumonia")


def material(folder: Path, document_root: Path) -> tuple[Path, str]:
    """A tiny saved classifier and one image under the document root (its local-files URI)."""
    import keras

    from labeler.synthetic import write_dataset
    from models.classifiers import build_small_cnn
    from models.loading import save_classifier

    keras.utils.set_random_seed(2)
    model, spec = build_small_cnn(CLASSES, input_size=(32, 32), filters=(4, 8))
    images = write_dataset(folder / "data", per_class=1, size=64, seed=5) / "images"
    image = next(images.rglob("*.png"))
    (document_root / "scale").mkdir(parents=True, exist_ok=True)
    (document_root / "scale" / "one.png").write_bytes(image.read_bytes())
    return save_classifier(model, spec, folder / "cnn.keras"), "/data/local-files/?d=scale/one.png"


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def measure(sizes: list[int]) -> list[dict]:
    from explain.labelstudio.configs import labeling_config
    from labeler.cli import prelabel_settings
    from labeler.posting import POSTS_IN_FLIGHT
    from labeler.prelabeling import prelabel_project
    from labeler.studio import LabelStudioServer
    from labeler.pending import pending_tasks
    from labeler.workspace import Workspace

    rows, rerun = [], []
    with tempfile.TemporaryDirectory() as tmp, LabelStudioServer() as server:
        tmp = Path(tmp)
        model, uri = material(tmp, server.document_root)
        ls = Workspace(server.url, server.token).client
        project = ls.projects.create(title="scale", label_config=labeling_config(CLASSES)).id
        ws = Workspace(server.url, server.token, project, f"sqlite:///{tmp / 'labeler.db'}")
        settings = prelabel_settings("layercam", None, "predicted", "fraction:0.2", 0.001, 64)
        run = lambda: prelabel_project(  # noqa: E731 - as `labeler prelabel --fast-import` (this Label Studio has the flag)
            ws, model, settings, batch_size=BATCH, document_root=server.document_root, fast_import=True
        )
        ls.projects.import_tasks(id=project, request=[{"data": {"image": uri}}])
        version = run().version  # and one real answer, to copy
        answer = ls.predictions.list(project=project)[0]
        have = 1
        for size in sizes:
            for start in range(have, size, 2000):
                ls.projects.import_tasks(id=project, request=[{"data": {"image": uri}}] * (min(size, start + 2000) - start))
            have = size
            fill = [t.id for t in pending_tasks(ws, project, version)][:-PENDING]
            for start in range(0, len(fill), 2000):
                ls.projects.import_predictions(id=project, request=[
                    {"task": i, "result": answer.result, "score": answer.score, "model_version": version}
                    for i in fill[start:start + 2000]
                ])
            wall = time.perf_counter()
            report = run()
            wall = time.perf_counter() - wall
            assert report.predicted == PENDING, report
            rerun_s = timed(lambda: rerun.append(run()))
            assert rerun[-1].predicted == 0, rerun[-1]
            spare = fill[-2 * BATCH:]  # already predicted: a second prediction ("bench") is harmless here
            post = lambda i: ls.predictions.create(task=i, result=answer.result, score=answer.score, model_version="bench")  # noqa: E731
            import_s = timed(lambda: ls.projects.import_predictions(id=project, request=[
                {"task": i, "result": answer.result, "score": answer.score, "model_version": "bench"} for i in spare[:BATCH]
            ]))
            with ThreadPoolExecutor(POSTS_IN_FLIGHT) as pool:
                create_s = timed(lambda: list(pool.map(post, spare[BATCH:])))
            listing_s = timed(lambda: ({p.task for p in ls.predictions.list(project=project)}, list(ls.tasks.list(project=project, fields="all"))))
            row = {
                "tasks": size, "batch_s": report.seconds / (PENDING / BATCH), "prelabel_s": wall, "rerun_s": rerun_s,
                "old_listing_s": listing_s, "import16_s": import_s, "create16_s": create_s,
            }
            print(json.dumps({k: round(v, 2) for k, v in row.items()}), flush=True)
            rows.append(row)
    return rows


def section(rows: list[dict], command: str) -> str:
    from labeler.posting import POSTS_IN_FLIGHT

    hw = hardware()
    lines = [
        START, "## prelabel at scale", "",
        f"`{command}` on {date.today()}, {hw['cpu']}, {hw['cores']} cores, {hw['ram_gib']:.0f} GiB, "
        f"load average {load_average()}; Label Studio 1.23 (SQLite) on the same machine; a tiny CNN on one "
        f"64 px image so that Label Studio, not the model, is the cost; {PENDING} pending tasks per size.",
        "",
        "| tasks | prelabel, per 16-task batch | prelabel of 64 pending, whole call | rerun with nothing to do "
        "| before: listing every prediction + task | 16 via `import_predictions` | 16 `predictions.create` |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['tasks']:,} | {r['batch_s']:.2f} s | {r['prelabel_s']:.1f} s | {r['rerun_s']:.1f} s "
            f"| {r['old_listing_s']:.1f} s | {r['import16_s']:.2f} s | {r['create16_s']:.2f} s |"
        )
    lines += [
        "",
        "The rerun includes loading the (tiny) model; it asks Label Studio for the project's model "
        "versions and the tasks lacking this version (a Data Manager filter), so it lists no prediction and no "
        "finished task. This Label Studio runs with `labeler.posting.FAST_IMPORT_FLAG` (as every one this project "
        "starts) and the pre-labelling is told so (`--fast-import`): batches are gathered and posted in bulk at any "
        "size (column 6: constant). Without the flag a bulk request of 16 cost 0.40 / 1.42 s at 1,000 / 4,000 "
        "tasks (2026-12-01, this machine) and grows with the project, so past 1,500 predictions each task is "
        f"posted on its own (column 7, {POSTS_IN_FLIGHT} in flight).",
        END,
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,4000", help="comma-separated project sizes, growing")
    parser.add_argument("--quick", action="store_true", help="sizes 500,2000")
    parser.add_argument("--out", type=Path, help="Markdown file to write the section into (e.g. BENCHMARKS.md)")
    args = parser.parse_args()
    sizes = [500, 2000] if args.quick else [int(s) for s in args.sizes.split(",")]
    if sizes != sorted(sizes) or sizes[0] <= PENDING + 2 * BATCH:
        parser.error(f"--sizes must grow and start above {PENDING + 2 * BATCH}")
    rows = measure(sizes)
    text = section(rows, " ".join(["python", "benchmarks/prelabel_scale.py", *sys.argv[1:]]))
    print(text)
    if args.out:
        write_section(args.out, START, END, text)


if __name__ == "__main__":
    main()
