"""Projects of growing size: what each ``labeler`` command costs at 1,000, 4,000, 16,000 ... tasks,
fitted and extrapolated to 100,000 and 1,000,000.

One real Label Studio (``labeler.studio``) and one project grown to each size in turn, built in
bulk so that building is cheap: every task points at one 64 px image in the document root (so
that Label Studio and our code, not the model, are the cost), carries a ``source`` and a keyed
``patient`` value (two images per patient), every fourth task an annotation (a brush mask, as
an annotator would submit), and every task but ``PENDING`` a prediction of the model's version.
Then, per size, each command runs as a user runs it (``labeler ...`` in a subprocess, so its wall
time includes starting Python and loading TensorFlow, and its peak RSS is its own):

- ``sync``, catching up the annotations added since the last size (the bulk import bypasses the
  webhooks), again at once (it re-reads the tasks changed in the last ``labeler.syncing.OVERLAP``,
  a minute: writes Label Studio may still have been committing), then, once nothing has changed
  for that long, twice more: the first moves the mark past every change, the second (measured)
  has nothing new;
- ``prelabel`` of the ``PENDING`` tasks (seconds per 16-task batch, from its own report), then a
  rerun with nothing to do;
- ``import`` of 1 % new images (distinct 64 px PNGs in a folder), then ``prelabel`` of them;
- ``stats`` and ``export --format png`` of the annotated tasks;
- ``/predict`` of one task (the backend's Flask app in this process, on the same database:
  median of ``PREDICT_CALLS``);
- our database's bytes per task (the SQLite file over its live tasks) and per prediction /
  annotation revision (growth of the file over rows added).

    python benchmarks/scale.py --out BENCHMARKS.md [--sizes 1000,4000,16000] [--quick]

``--quick`` (500 and 2,000 tasks) takes a few minutes on 2 cores; the default about 25 minutes.
The results are printed and written between ``<!-- scale:start -->`` and ``<!-- scale:end -->``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from results import hardware, load_average, write_section  # noqa: E402  benchmarks/results.py

START, END = "<!-- scale:start -->", "<!-- scale:end -->"
PENDING = 64
BATCH = 16
ANNOTATED_EVERY = 4
PREDICT_CALLS = 15
CLASSES = ("covid", "normal", "pneumonia")
EXTRAPOLATE = (100_000, 1_000_000)
CHUNK = 2000  # tasks per bulk request while building


# The command's own peak RSS (VmHWM of its address space); the rusage of a child is no good here:
# Linux carries the forking parent's peak (this process, TensorFlow loaded) across exec.
_CHILD = """import re, sys
from labeler.cli import main
try:
    main()
finally:
    peak = re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)
    sys.stderr.write(f"\\npeak-rss-kib {peak}\\n")
"""


def run_cli(args: list[str], env: dict) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MiB, stdout + stderr) of ``labeler ARGS``; raises on failure."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _CHILD, *args], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"labeler {' '.join(args)} failed ({done.returncode}):\n{output[-3000:]}")
    return wall, int(re.search(r"peak-rss-kib (\d+)", output).group(1)) / 1024, output


def material(folder: Path, document_root: Path) -> tuple[Path, str]:
    """A tiny saved classifier and one 64 px image under the document root (its local-files URI)."""
    import keras

    from labeler.synthetic import write_dataset
    from models.classifiers import build_small_cnn
    from models.loading import save_classifier

    keras.utils.set_random_seed(2)
    model, spec = build_small_cnn(CLASSES, input_size=(32, 32), filters=(4, 8))
    images = write_dataset(folder / "data", per_class=1, size=64, seed=5) / "images"
    (document_root / "scale").mkdir(parents=True, exist_ok=True)
    (document_root / "scale" / "one.png").write_bytes(next(images.rglob("*.png")).read_bytes())
    return save_classifier(model, spec, folder / "cnn.keras"), "/data/local-files/?d=scale/one.png"


def new_images(folder: Path, count: int, seed: int) -> Path:
    """``count`` distinct 64 px gray PNGs (random texture) in ``folder``."""
    import cv2

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for n in range(count):
        cv2.imwrite(str(folder / f"new-{n:05d}.png"), rng.integers(0, 255, (64, 64), dtype=np.uint8))
    return folder


def db_bytes(url: str) -> int:
    """Bytes of the SQLite database's pages in use (after checkpointing its write-ahead log)."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        pragma = lambda name: connection.exec_driver_sql(f"PRAGMA {name}").scalar_one()  # noqa: E731
        used = (pragma("page_count") - pragma("freelist_count")) * pragma("page_size")
    engine.dispose()
    return used


def db_count(url: str, table: str) -> int:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.connect() as connection:
        where = " WHERE deleted_at IS NULL" if table == "tasks" else ""
        count = connection.execute(sa.text(f"SELECT count(*) FROM {table}{where}")).scalar_one()
    engine.dispose()
    return count


def predict_latency(model: Path, url: str, document_root: Path, config: str, project: int, uri: str) -> float:
    """Median seconds of /predict for one task (the backend's app in this process, warm)."""
    from backend.app import create_app
    from backend.config import Settings

    client = create_app(Settings(model_path=model, database_url=url, local_files_document_root=document_root, warmup=False)).test_client()
    times = []
    for n in range(PREDICT_CALLS + 1):
        body = {"tasks": [{"id": 10**9 + n, "data": {"image": uri}}], "project": f"{project}.1", "label_config": config}
        start = time.perf_counter()
        answer = client.post("/predict", json=body)
        times.append(time.perf_counter() - start)
        assert answer.status_code == 200, answer.json
    return statistics.median(times[1:])


def measure(sizes: list[int]) -> list[dict]:
    from explain.labelstudio.configs import labeling_config
    from labeler.pending import pending_tasks
    from labeler.studio import LabelStudioServer
    from labeler.syncing import OVERLAP
    from labeler.workspace import Workspace

    rows = []
    with tempfile.TemporaryDirectory() as tmp, LabelStudioServer() as server:
        tmp = Path(tmp)
        model, uri = material(tmp, server.document_root)
        config = labeling_config(CLASSES)
        ls = Workspace(server.url, server.token).client
        project = ls.projects.create(title="scale", label_config=config).id
        url = f"sqlite:///{tmp / 'labeler.db'}"
        env = {**os.environ, "LABEL_STUDIO_URL": server.url, "LABEL_STUDIO_API_KEY": server.token,
               "LABEL_STUDIO_PROJECT": str(project), "DATABASE_URL": url, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        # --fast-import: this Label Studio runs with its constant-cost prediction import (labeler.posting)
        prelabel = ["prelabel", "--model", str(model), "--document-root", str(server.document_root), "--fast-import"]
        ls.projects.import_tasks(id=project, request=[{"data": {"image": uri}}])
        run_cli(prelabel, env)  # one real answer, to copy
        answer = ls.predictions.list(project=project)[0]
        ws = Workspace(server.url, server.token, project, url)
        have = 1
        for size in sizes:
            for start in range(have, size, CHUNK):
                ls.projects.import_tasks(id=project, request=[
                    {"data": {"image": uri, "source": f"bulk/{i:07d}.png", "patient": f"k1:{i // 2:024x}"},
                     **({"annotations": [{"result": answer.result}]} if i % ANNOTATED_EVERY == 0 else {})}
                    for i in range(start, min(size, start + CHUNK))
                ])
            have = size
            fill = [t.id for t in pending_tasks(ws, project, answer.model_version)][:-PENDING]
            for start in range(0, len(fill), CHUNK):
                ls.projects.import_predictions(id=project, request=[
                    {"task": i, "result": answer.result, "score": answer.score, "model_version": answer.model_version}
                    for i in fill[start:start + CHUNK]
                ])
            changed = time.perf_counter()  # the last change made in Label Studio
            row = {"tasks": size}
            revisions, size_before = db_count(url, "annotation_revisions"), db_bytes(url)
            row["sync_catch_up_s"], row["sync_catch_up_mb"], _ = run_cli(["sync"], env)
            row["revision_bytes"] = (db_bytes(url) - size_before) / max(1, db_count(url, "annotation_revisions") - revisions)
            row["sync_recent_s"], _, _ = run_cli(["sync"], env)  # re-reads what changed in the last OVERLAP
            # nothing changed for OVERLAP: one sync moves the mark past every change, the next has nothing new
            time.sleep(max(0.0, OVERLAP.total_seconds() + 2 - (time.perf_counter() - changed)))
            run_cli(["sync"], env)
            row["sync_s"], row["sync_mb"], output = run_cli(["sync"], env)
            assert "fetched 0 changed task(s)" in output, output
            predictions, size_before = db_count(url, "predictions"), db_bytes(url)
            row["prelabel_s"], row["prelabel_mb"], output = run_cli(prelabel, env)
            done, seconds = re.search(r"pre-labelled (\d+) task\(s\) in ([\d.]+) s", output).groups()
            assert int(done) == PENDING, output
            row["batch_s"] = float(seconds) / (PENDING / BATCH)
            row["prediction_bytes"] = (db_bytes(url) - size_before) / max(1, db_count(url, "predictions") - predictions)
            row["prelabel_nothing_s"], row["prelabel_nothing_mb"], output = run_cli(prelabel, env)
            assert "pre-labelled 0 task(s)" in output, output
            folder = new_images(tmp / f"new-{size}", size // 100, seed=size)
            row["import_s"], row["import_mb"], _ = run_cli(["import", str(folder), "--document-root", str(server.document_root)], env)
            row["prelabel_new_s"], _, output = run_cli(prelabel, env)
            assert f"pre-labelled {size // 100} task(s)" in output, output
            have += size // 100
            row["stats_s"], row["stats_mb"], _ = run_cli(["stats", "--out", str(tmp / f"stats-{size}")], env)
            row["export_s"], row["export_mb"], _ = run_cli(
                ["export", str(tmp / f"export-{size}"), "--format", "png", "--document-root", str(server.document_root)], env
            )
            row["predict_s"] = predict_latency(model, url, server.document_root, config, project, uri)
            row["task_bytes"] = db_bytes(url) / db_count(url, "tasks")
            print(json.dumps({k: round(v, 2) for k, v in row.items()}), flush=True)
            rows.append(row)
    return rows


#: (row key, label, unit) of the table, in order
COLUMNS = (
    ("batch_s", "`prelabel`, per 16-task batch", "s"),
    ("prelabel_nothing_s", "`prelabel` with nothing new", "s"),
    ("prelabel_new_s", "`prelabel` of 1 % new", "s"),
    ("sync_s", "`sync` with nothing new (for a minute)", "s"),
    ("sync_recent_s", "`sync` right after the catch-up (re-reads the last minute's changes)", "s"),
    ("sync_catch_up_s", "`sync` catching up the tasks added since the last size", "s"),
    ("import_s", "`import` of 1 % new images", "s"),
    ("stats_s", "`stats`", "s"),
    ("stats_mb", "`stats` peak RSS", "MiB"),
    ("export_s", "`export --format png`", "s"),
    ("export_mb", "`export` peak RSS", "MiB"),
    ("predict_s", "`/predict` of one task (median)", "s"),
    ("task_bytes", "database bytes per task", "B"),
    ("prediction_bytes", "database bytes per prediction", "B"),
    ("revision_bytes", "database bytes per annotation revision", "B"),
)


NOTE = (
    "`labeler prelabel --fast-import` against this Label Studio (started with its constant-cost prediction "
    "import flag, `labeler.posting.FAST_IMPORT_FLAG`) posts every batch in bulk at any size; without the flag and "
    "the option, past 1,500 predictions each task is posted on its own (0.62 s per 16-task batch at 4,000 and "
    "16,000 tasks in the run of 2026-12-01 before the option). "
    "Rows that grow do so with what is new, not with the project: pre-labelling, importing and catching up "
    "1 % new tasks or the tasks added since the last size (their fits extrapolate the growth of what is new, "
    "not a cost of size). A sync right after changes re-reads the tasks changed in the minute before the "
    "previous sync (`labeler.syncing.OVERLAP`: writes Label Studio may still have been committing); once a "
    "minute has passed it reads nothing. `stats` and `export` here have a quarter of the tasks annotated, "
    "64 px; their memory with large masks is measured by `benchmarks/stats_scale.py` and "
    "`benchmarks/export_memory.py`."
)


def fit(sizes: list[int], values: list[float]) -> tuple[float, float]:
    """(a, b) of the least-squares line value = a + b * tasks."""
    b, a = np.polyfit(np.asarray(sizes, float), np.asarray(values, float), 1)
    return float(a), float(b)


def _value(v: float, unit: str) -> str:
    if unit == "s":
        return f"{v:.2f} s" if v < 10 else f"{v:.0f} s"
    return f"{v:,.0f} {unit}"


def section(rows: list[dict], command: str) -> str:
    hw = hardware()
    sizes = [r["tasks"] for r in rows]
    head = " | ".join(f"{s:,} tasks" for s in sizes)
    lines = [
        START, "## Projects of growing size", "",
        f"`{command}` on {date.today()}, {hw['cpu']}, {hw['cores']} cores, {hw['ram_gib']:.0f} GiB, "
        f"load average {load_average()}; Label Studio 1.23 (SQLite) on the same machine; a tiny CNN on one "
        f"64 px image so that Label Studio and our code, not the model, are the cost; every {ANNOTATED_EVERY}th "
        f"task annotated. Commands are timed as a user runs them (a new process: about 5 s of it is starting "
        "Python and TensorFlow); peak RSS is the command's own. The fit is least squares, value = a + b x tasks, "
        "over the sizes measured; where it falls (noise), the extrapolation shows the largest value measured.",
        "",
        f"| step | {head} | per 1,000 more tasks | at 100,000 (fit) | at 1,000,000 (fit) |",
        "|---|" + "---:|" * (len(sizes) + 3),
    ]
    for key, label, unit in COLUMNS:
        values = [r[key] for r in rows]
        a, b = fit(sizes, values) if len(sizes) > 1 else (values[0], 0.0)
        cells = " | ".join(_value(v, unit) for v in values)
        # no measured growth (a flat or falling fit, i.e. noise): the largest value measured
        far = " | ".join(_value(a + b * n if b > 0 else max(values), unit) for n in EXTRAPOLATE)
        lines.append(f"| {label} | {cells} | {b * 1000:+.3g} {unit} | {far} |")
    lines += ["", NOTE, END]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,4000,16000", help="comma-separated project sizes, growing")
    parser.add_argument("--quick", action="store_true", help="sizes 500,2000")
    parser.add_argument("--out", type=Path, help="Markdown file to write the section into (e.g. BENCHMARKS.md)")
    args = parser.parse_args()
    sizes = [500, 2000] if args.quick else [int(s) for s in args.sizes.split(",")]
    if sizes != sorted(sizes) or sizes[0] <= 2 * PENDING:
        parser.error(f"--sizes must grow and start above {2 * PENDING}")
    rows = measure(sizes)
    text = section(rows, " ".join(["python", "benchmarks/scale.py", *sys.argv[1:]]))
    print(text)
    if args.out:
        write_section(args.out, START, END, text)


if __name__ == "__main__":
    main()
