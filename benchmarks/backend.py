"""End-to-end speed of the Label Studio ML backend on the CPU: /predict and /webhook over real HTTP.

The real server runs as it does in production: ``labeler-backend`` (gunicorn, 1 worker, 4 threads)
in a subprocess on a free loopback port, with its own temporary SQLite database and a local-files
document root holding 16 real chest X-rays copied from ``../shared/data/cxr/images`` (internal
research data: read only, copied into a temporary folder, never into the repository).

Models, saved with ``models.loading.save_classifier`` into a temporary folder (random seeded
weights, classes covid / normal / pneumonia):

- the reference article's classifier, ``build_inception_classifier()`` (InceptionV3 nested in a
  functional model, 256x256x3, Grad-CAM at mixed10): the realistic model size;
- the small CNN, ``build_small_cnn(input_size=(128, 128))``, as a second row (skipped by --quick).

What is measured, for each model:

1. /predict with Label Studio's body (16 tasks pointing at ``/data/local-files/?d=...``, the
   project id and a label config with Choices + BrushLabels + PolygonLabels): one warm-up
   request, then N timed requests (new task ids each time, so that every prediction is stored).
   Latency is client-side, from sending the request to the last byte of the answer. The share of
   each stage (read = fetch + decode of the batch's images on several threads, model = forward +
   Grad-CAM, regions, results = Label Studio JSON, database) comes from the deltas of
   ``labeler_predict_stage_seconds_sum`` on /metrics around each request; "HTTP + JSON + other" is
   the rest of the latency. fetch and decode are shown too, as the sum over the reading threads
   (they overlap, so they are not part of the total).
2. /webhook: 100 annotations, each delivered as ANNOTATION_CREATED then ANNOTATION_UPDATED (200
   deliveries, every one a new revision), each on a new connection as Label Studio sends them, with
   the pre-label of a real task as the annotation result (after 5 warm-up deliveries).

    python benchmarks/backend.py --out BENCHMARKS.md [--repeats N] [--quick]

The results are printed and written between ``<!-- backend:start -->`` and ``<!-- backend:end -->``
in the output file. A full run takes about a minute on 2 cores; ``--quick`` (Inception only, 3
repeats, 40 deliveries) about 20 seconds.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import requests

from results import hardware, load_average, write_section  # benchmarks/results.py

ROOT = Path(__file__).resolve().parent.parent
XRAYS = ROOT.parent / "shared" / "data" / "cxr" / "images"
START, END = "<!-- backend:start -->", "<!-- backend:end -->"
TASKS = 16
FIRST_TIMED_ID = 1_000  # timed request r uses task ids 1000 * (r + 1) + 0..15
PROJECT = "1.1764000000"
STAGES = ("read", "model", "regions", "results", "database")
THREADED = ("fetch", "decode")  # inside "read", summed over its threads
OTHER = "HTTP + JSON + other"
READY_TIMEOUT_S = 300
REQUEST_TIMEOUT_S = 300
WEBHOOK_WARMUP = 5
CONFIG = """<View>
  <Image name="image" value="$image"/>
  <Choices name="diagnosis" toName="image"><Choice value="covid"/><Choice value="normal"/><Choice value="pneumonia"/></Choices>
  <BrushLabels name="mask" toName="image"><Label value="Opacity"/></BrushLabels>
  <PolygonLabels name="outline" toName="image"><Label value="Opacity"/></PolygonLabels>
</View>"""
MODELS = {
    "inception": "`build_inception_classifier()`: InceptionV3 nested, 256x256x3, Grad-CAM at `mixed10`",
    "small_cnn": "`build_small_cnn(input_size=(128, 128))`: 3 conv blocks, Grad-CAM at `features`",
}
# Settings the backend reads from its environment: unset here so that it runs on its defaults.
BACKEND_VARS = (
    "CAM_METHOD", "CAM_LAYER", "CAM_TARGET", "CAM_THRESHOLD", "CAM_MIN_AREA", "CAM_MAX_VERTICES", "BATCH_SIZE",
    "LABEL_MAP", "LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "ALLOWED_IMAGE_HOSTS", "MAX_IMAGE_BYTES",
    "FETCH_TIMEOUT", "BASIC_AUTH_USER", "BASIC_AUTH_PASS", "BACKEND_HOST", "BACKEND_WORKERS", "BACKEND_TIMEOUT",
)


def settings(quick: bool, repeats: int | None) -> dict:
    """How much work the run does; ``--quick`` trims it to a smoke run."""
    if quick:
        return {"repeats": repeats or 3, "annotations": 20, "models": ["inception"]}
    return {"repeats": repeats or 10, "annotations": 100, "models": ["inception", "small_cnn"]}


# ---------------------------------------------------------------- set-up


def chest_xrays(count: int) -> list[Path]:
    """The first ``count`` real chest X-rays of the shared data set; exits with a clear message if absent."""
    found = sorted(XRAYS.glob("*.png"))[:count] if XRAYS.is_dir() else []
    if len(found) < count:
        raise SystemExit(
            f"error: this benchmark needs {count} real chest X-rays in {XRAYS} (internal research data, read "
            f"only), found {len(found)}; put the shared data set beside the repository"
        )
    return found


def document_root(images: list[Path], root: Path) -> list[str]:
    """Copy the images under ``root/xrays``; their paths relative to root (the ``?d=`` values)."""
    folder = root / "xrays"
    folder.mkdir(parents=True)
    for image in images:
        shutil.copy(image, folder / image.name)
    return [f"xrays/{image.name}" for image in images]


def save_models(kinds: list[str], folder: Path) -> dict[str, Path]:
    """Build and save each classifier in a helper process (TensorFlow stays out of this one)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--save-models", str(folder), *kinds]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=cpu_env())
    if done.returncode:
        raise SystemExit(f"error: building the models failed:\n{done.stderr[-2000:]}")
    return {kind: folder / f"{kind}.keras" for kind in kinds}


def save_models_worker(folder: Path, kinds: list[str]) -> None:
    import keras

    from models.classifiers import build_inception_classifier, build_small_cnn
    from models.loading import save_classifier

    builders = {"inception": build_inception_classifier, "small_cnn": lambda: build_small_cnn(input_size=(128, 128))}
    for kind in kinds:
        keras.utils.set_random_seed(0)
        model, spec = builders[kind]()
        save_classifier(model, spec, folder / f"{kind}.keras")


def cpu_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in BACKEND_VARS}
    return {**env, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2", "NO_PROXY": "127.0.0.1,localhost"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    log_path: Path
    log_file: object

    def log_tail(self, chars: int = 3000) -> str:
        self.log_file.flush()
        return self.log_path.read_text(errors="replace")[-chars:]


def start_backend(model: Path, folder: Path, root: Path) -> Server:
    """``labeler-backend`` (gunicorn, 1 worker, 4 threads) on a free loopback port, in its own session."""
    port = free_port()
    env = {
        **cpu_env(),
        "MODEL_PATH": str(model),
        "DATABASE_URL": f"sqlite:///{folder / (model.stem + '.db')}",
        "LOCAL_FILES_DOCUMENT_ROOT": str(root),
        "BACKEND_PORT": str(port),
        "BACKEND_WORKERS": "1",
        "BACKEND_THREADS": "4",
        "WARMUP": "1",
    }
    log_path = folder / f"{model.stem}.log"
    log_file = open(log_path, "wb")
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "labeler-backend")], env=env, cwd=ROOT, stdout=log_file,
        stderr=subprocess.STDOUT, start_new_session=True,
    )
    return Server(process, f"http://127.0.0.1:{port}", log_path, log_file)


def wait_ready(server: Server, session: requests.Session) -> float:
    """Seconds until /health says model_loaded; raises with the backend's log if it never does."""
    started = time.perf_counter()
    while time.perf_counter() - started < READY_TIMEOUT_S:
        if server.process.poll() is not None:
            raise RuntimeError(f"the backend exited with status {server.process.returncode}:\n{server.log_tail()}")
        try:
            if session.get(f"{server.url}/health", timeout=2).json().get("model_loaded"):
                return time.perf_counter() - started
        except (requests.RequestException, ValueError):
            pass
        time.sleep(0.25)
    raise RuntimeError(f"the backend did not load its model in {READY_TIMEOUT_S} s:\n{server.log_tail()}")


def stop_backend(server: Server) -> None:
    """SIGTERM to the backend's process group, SIGKILL if it lingers."""
    if server.process.poll() is None:
        try:
            os.killpg(server.process.pid, signal.SIGTERM)
            server.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait(timeout=10)
        except ProcessLookupError:
            pass
    server.log_file.close()


# ---------------------------------------------------------------- /predict


def predict_body(paths: list[str], first_id: int) -> dict:
    tasks = [{"id": first_id + n, "data": {"image": f"/data/local-files/?d={path}"}} for n, path in enumerate(paths)]
    return {"tasks": tasks, "project": PROJECT, "label_config": CONFIG}


def metric_sums(session: requests.Session, url: str) -> dict[str, float]:
    """The ``_sum`` of every stage histogram, and the server-side /predict time, from /metrics."""
    text = session.get(f"{url}/metrics", timeout=10).text
    sums = {s: float(v) for s, v in re.findall(r'^labeler_predict_stage_seconds_sum\{stage="(\w+)"\} (\S+)$', text, re.M)}
    server = re.search(r'^labeler_request_seconds_sum\{route="/predict"\} (\S+)$', text, re.M)
    sums["server"] = float(server.group(1)) if server else 0.0
    return sums


def timed_predict(session: requests.Session, url: str, body: dict) -> tuple[float, bytes]:
    """Seconds from sending the request to the last byte of a 200 answer, and the answer."""
    started = time.perf_counter()
    answer = session.post(f"{url}/predict", json=body, timeout=REQUEST_TIMEOUT_S)
    content = answer.content
    elapsed = time.perf_counter() - started
    if answer.status_code != 200:
        raise RuntimeError(f"/predict answered {answer.status_code}: {content[:500]!r}")
    return elapsed, content


def check_results(content: bytes) -> list[dict]:
    results = json.loads(content)["results"]
    if len(results) != TASKS or any(not r["result"] for r in results):
        raise RuntimeError(f"/predict returned {len(results)} results, some empty: {content[:500]!r}")
    return results


def measure_predict(session: requests.Session, url: str, paths: list[str], repeats: int) -> dict:
    """One warm-up /predict, then ``repeats`` timed ones with stage deltas from /metrics."""
    warmup_s, _ = timed_predict(session, url, predict_body(paths, 1_000_000))
    latencies, stages, sizes = [], [], []
    for r in range(repeats):
        before = metric_sums(session, url)
        seconds, content = timed_predict(session, url, predict_body(paths, FIRST_TIMED_ID * (r + 1)))
        after = metric_sums(session, url)
        results = check_results(content)
        latencies.append(seconds)
        sizes.append(len(content))
        stages.append({key: after.get(key, 0.0) - before.get(key, 0.0) for key in (*STAGES, *THREADED, "server")})
    return {"warmup_s": warmup_s, "latencies": latencies, "stages": stages, "sizes": sizes, "last": results}


def result_counts(results: list[dict]) -> dict:
    """Predicted classes and Label Studio results by type, in one answer of the batch."""
    classes, kinds = {}, {}
    for task in results:
        for item in task["result"]:
            kinds[item["type"]] = kinds.get(item["type"], 0) + 1
            for choice in item["value"].get("choices", []):
                classes[choice] = classes.get(choice, 0) + 1
    return {"classes": classes, "kinds": kinds}


def database_counts(database: Path) -> dict[str, int]:
    """Rows the run left in the backend's database (a check that everything was stored once)."""
    import sqlite3

    queries = {
        "predictions": "SELECT COUNT(*) FROM predictions",
        "tasks": "SELECT COUNT(*) FROM tasks",
        "deleted_tasks": "SELECT COUNT(*) FROM tasks WHERE deleted_at IS NOT NULL",
        "revisions": "SELECT COUNT(*) FROM annotation_revisions",
    }
    with sqlite3.connect(database) as connection:
        return {key: connection.execute(query).fetchone()[0] for key, query in queries.items()}


# ---------------------------------------------------------------- /webhook


def annotation_event(action: str, annotation_id: int, task_id: int, path: str, result: list, minute: int) -> dict:
    """A Label Studio 1.23 ANNOTATION_CREATED / ANNOTATION_UPDATED payload for a task already predicted."""
    return {
        "action": action,
        "annotation": {
            "id": annotation_id, "task": task_id, "project": int(PROJECT.split(".")[0]), "result": result,
            "completed_by": 1, "updated_by": 1, "lead_time": 12.5, "was_cancelled": False, "ground_truth": False,
            "parent_prediction": None, "created_at": "2026-11-28T09:00:00.000000Z",
            "updated_at": f"2026-11-28T{10 + minute // 60:02d}:{minute % 60:02d}:00.000000Z",
        },
        "task": {"id": task_id, "data": {"image": f"/data/local-files/?d={path}"}},
        "project": {"id": int(PROJECT.split(".")[0]), "title": "CXR"},
    }


def deliveries(annotations: int, first_id: int, paths: list[str], tasks: list[dict]) -> list[dict]:
    """Each annotation created, then updated (with one result fewer): 2 x ``annotations`` new revisions,
    on the tasks of the first timed /predict (ids 1000..., same images)."""
    events = []
    for n in range(annotations):
        i = n % len(paths)
        result = tasks[i]["result"]
        annotation_id, task_id = first_id + n, FIRST_TIMED_ID + i
        events.append(annotation_event("ANNOTATION_CREATED", annotation_id, task_id, paths[i], result, 2 * n))
        events.append(
            annotation_event("ANNOTATION_UPDATED", annotation_id, task_id, paths[i], result[:-1] or result, 2 * n + 1)
        )
    return events


def post_webhook(url: str, event: dict) -> float:
    """Milliseconds for one delivery on a new connection (Label Studio does not keep one open)."""
    with requests.Session() as session:
        session.trust_env = False
        started = time.perf_counter()
        answer = session.post(f"{url}/webhook", json=event, timeout=10)
        elapsed = time.perf_counter() - started
    if answer.status_code != 200 or answer.json().get("stored") != 1:
        raise RuntimeError(f"/webhook answered {answer.status_code}: {answer.text[:300]}")
    return 1000 * elapsed


def measure_webhooks(url: str, annotations: int, paths: list[str], tasks: list[dict]) -> dict:
    for event in deliveries(WEBHOOK_WARMUP, 900_000, paths, tasks)[:WEBHOOK_WARMUP]:
        post_webhook(url, event)
    events = deliveries(annotations, 1, paths, tasks)
    times = [post_webhook(url, event) for event in events]
    payload = sum(len(json.dumps(e)) for e in events) / len(events)
    return {"ms": times, "payload_kib": payload / 1024}


# ---------------------------------------------------------------- one model


def bench_model(kind: str, model: Path, folder: Path, root: Path, paths: list[str], cfg: dict) -> dict:
    """Start the backend on ``model``, measure it, stop it (even on errors)."""
    server = start_backend(model, folder, root)
    try:
        with requests.Session() as session:
            session.trust_env = False
            ready_s = wait_ready(server, session)
            out = measure_predict(session, server.url, paths, cfg["repeats"])
        if kind == "inception":
            out["webhooks"] = measure_webhooks(server.url, cfg["annotations"], paths, out["last"])
    except Exception:
        print(server.log_tail(), file=sys.stderr)
        raise
    finally:
        stop_backend(server)
    out.update(
        ready_s=ready_s, counts=result_counts(out.pop("last")), model_mib=model.stat().st_size / 2**20,
        stored=database_counts(folder / f"{model.stem}.db"),
    )
    print(f"  {kind}: ready in {ready_s:.0f} s, median /predict {np.median(out['latencies']):.2f} s", file=sys.stderr)
    return out


def run_all(cfg: dict) -> dict:
    images = chest_xrays(TASKS)
    with tempfile.TemporaryDirectory(prefix="backend-bench-") as tmp:
        folder = Path(tmp)
        paths = document_root(images, folder / "root")
        models = save_models(cfg["models"], folder / "models")
        sizes = sorted({tuple(int(v) for v in image_size(p)) for p in images})
        results = {kind: bench_model(kind, path, folder, folder / "root", paths, cfg) for kind, path in models.items()}
    results["image_sizes"] = sizes
    return results


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the PNG header."""
    header = path.read_bytes()[16:24]
    return int.from_bytes(header[:4], "big"), int.from_bytes(header[4:], "big")


# ---------------------------------------------------------------- report


def machine() -> dict:
    packages = ("tensorflow", "keras", "flask", "gunicorn", "sqlalchemy", "requests")
    return {
        **hardware(),
        "versions": {"Python": platform.python_version(), **{p: version(p) for p in packages}},
    }


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def pct(values, q: float) -> float:
    return float(np.percentile(values, q))


def shares(run: dict) -> dict[str, float]:
    """Seconds per request of each stage and of the rest, over all timed requests."""
    n = len(run["latencies"])
    per_stage = {s: sum(r[s] for r in run["stages"]) / n for s in STAGES}
    threaded = {s: sum(r[s] for r in run["stages"]) / n for s in THREADED}
    total = sum(run["latencies"]) / n
    return {**per_stage, **threaded, OTHER: total - sum(per_stage.values()), "total": total,
            "server": sum(r["server"] for r in run["stages"]) / n}


def latency_table(results: dict, cfg: dict) -> list[str]:
    lines = [
        "| model | model file (MiB) | ready (s) | warm-up request (s) | request median (s) | request p95 (s) "
        "| per task median (ms) | per task p95 (ms) | answer (KiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind in cfg["models"]:
        run = results[kind]
        lat = run["latencies"]
        lines.append(
            f"| {kind} | {run['model_mib']:.1f} | {run['ready_s']:.0f} | {run['warmup_s']:.2f} | {np.median(lat):.2f} "
            f"| {pct(lat, 95):.2f} | {1000 * np.median(lat) / TASKS:.0f} | {1000 * pct(lat, 95) / TASKS:.0f} "
            f"| {np.median(run['sizes']) / 1024:.0f} |"
        )
    return lines


def stage_table(results: dict, cfg: dict) -> list[str]:
    kinds = cfg["models"]
    parts = {kind: shares(results[kind]) for kind in kinds}
    lines = [
        "| stage | " + " | ".join(f"{k} ms/request | {k} share" for k in kinds) + " |",
        "|---|" + "---:|---:|" * len(kinds),
    ]
    for stage in (*STAGES, OTHER, "total", *THREADED):
        cells = []
        for kind in kinds:
            p = parts[kind]
            share = "(threads)" if stage in THREADED else f"{100 * p[stage] / p['total']:.1f} %"
            cells += [f"{1000 * p[stage]:.0f}", share]
        name = f"**{stage}**" if stage == "total" else stage
        if stage in THREADED:
            name = f"{stage} (in read, summed over its threads)"
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def predict_section(results: dict, cfg: dict) -> tuple[list[str], list[str]]:
    first = results[cfg["models"][0]]
    sizes = results["image_sizes"]
    lines = [
        f"### 1. /predict, a batch of {TASKS} tasks",
        "",
        f"{TASKS} real chest X-rays (8-bit grayscale PNG, {min(sizes)[0]}-{max(sizes)[0]} px wide, "
        f"{min(s[1] for s in sizes)}-{max(s[1] for s in sizes)} px high) read from the local-files document root; "
        "label config with Choices (covid / normal / pneumonia) + BrushLabels + PolygonLabels (\"Opacity\"); "
        "backend defaults otherwise (CAM_TARGET=predicted, BATCH_SIZE=16). One warm-up request, then "
        f"{cfg['repeats']} timed requests with new task ids each (every prediction stored: "
        f"{first['stored']['predictions']} prediction rows at the end for {TASKS * (cfg['repeats'] + 1)} tasks). "
        "Latency is "
        "client-side, on a kept-alive connection, up to the last byte of the answer.",
        "",
        *latency_table(results, cfg),
        "",
        "Where the time goes (mean per request over the timed requests; stages from the "
        "`labeler_predict_stage_seconds_sum` deltas on /metrics, \"HTTP + JSON + other\" = latency - stages):",
        "",
        *stage_table(results, cfg),
        "",
    ]
    for kind in cfg["models"]:
        counts, p = results[kind]["counts"], shares(results[kind])
        handler = p["server"] - sum(p[s] for s in STAGES)
        lines.append(
            f"- {kind}: last answer's predicted classes {counts['classes']}, results by type {counts['kinds']}; "
            f"of \"{OTHER}\", {1000 * handler:.0f} ms/request is in the Flask handler outside the stages (validation, "
            f"label config, JSON encoding) and {1000 * (p[OTHER] - handler):.0f} ms outside it (gunicorn, HTTP, "
            "the client reading the answer)."
        )
    aims = []
    for kind in cfg["models"]:
        p = shares(results[kind])
        rest = 100 * (1 - p["model"] / p["total"])
        if kind == "inception":
            aims.append(f"share of the /predict request outside the model <= 30 % (Inception, the realistic model): "
                        f"{rest:.1f} % — {verdict(rest <= 30)}")
        else:
            aims.append(f"{kind}, for reference (no aim: its model step is so cheap that the fixed per-image costs "
                        f"dominate): {rest:.1f} % outside the model")
    return lines, aims


def webhook_section(results: dict, cfg: dict) -> tuple[list[str], list[str]]:
    hooks = results["inception"].get("webhooks")
    if not hooks:
        return [], []
    ms, db = hooks["ms"], results["inception"]["stored"]
    lines = [
        "### 2. /webhook",
        "",
        f"{cfg['annotations']} annotations, each delivered as ANNOTATION_CREATED then ANNOTATION_UPDATED "
        f"({len(ms)} deliveries, each stored as a new revision), on the Inception backend after its /predict runs, "
        f"one at a time, each on a new connection as Label Studio sends them, after {WEBHOOK_WARMUP} warm-up "
        f"deliveries. The annotation result is a task's pre-label (choice, brush RLE, polygon), "
        f"{hooks['payload_kib']:.1f} KiB of JSON per delivery on average. Database at the end: "
        f"{db['revisions']} annotation revisions ({len(ms)} + {WEBHOOK_WARMUP} warm-up), {db['tasks']} tasks, "
        f"{db['deleted_tasks']} of them marked deleted.",
        "",
        "| deliveries | median (ms) | p95 (ms) | max (ms) | over 20 ms |",
        "|---:|---:|---:|---:|---:|",
        f"| {len(ms)} | {np.median(ms):.1f} | {pct(ms, 95):.1f} | {max(ms):.1f} | {sum(v > 20 for v in ms)} |",
    ]
    aims = [
        f"webhook p95 within a few tens of ms (<= 50 ms): {pct(ms, 95):.1f} ms — {verdict(pct(ms, 95) <= 50)}",
        f"every webhook well under Label Studio's 1 s: max {max(ms):.0f} ms — {verdict(max(ms) < 1000)}",
    ]
    return lines, aims


def report(results: dict, cfg: dict, quick: bool) -> str:
    m = results["machine"]
    versions = ", ".join(f"{name} {v}" for name, v in m["versions"].items())
    command = "python benchmarks/backend.py --out BENCHMARKS.md" + (" --quick" if quick else "")
    models = "; ".join(f"{kind}: {MODELS[kind]}" for kind in cfg["models"])
    lines = [
        START,
        f"## Backend benchmark{' (quick)' if quick else ''} — {datetime.date.today().isoformat()}",
        "",
        "End-to-end speed of the ML backend (`labeler-backend`: gunicorn, 1 worker, 4 threads, SQLite) over real "
        "HTTP on loopback; see `benchmarks/backend.py` for what is measured and how.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']:.1f} GiB RAM, CPU only; load average "
        f"{results['load'][0]} at the start, {results['load'][1]} at the end. {versions}.",
        f"Models (random seeded weights, classes covid / normal / pneumonia): {models}. Command: `{command}` "
        f"({results['total_s'] / 60:.1f} min).",
        "",
    ]
    aims = []
    for section, found in (predict_section(results, cfg), webhook_section(results, cfg)):
        lines += [*section, ""] if section else []
        aims += found
    lines += ["### Aims", "", *[f"- {aim}" for aim in aims], "", END]
    return "\n".join(lines) + "\n"


def write(path: Path, section: str) -> None:
    """Replace the marked section of ``path``, or append it."""
    write_section(path, START, END, section)


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"), help="markdown file to write the results into")
    parser.add_argument("--repeats", type=int, default=None, help="timed /predict requests per model (default 10, quick 3)")
    parser.add_argument("--quick", action="store_true", help="smoke run: Inception only, fewer repeats and webhooks")
    parser.add_argument("--save-models", nargs="+", metavar=("FOLDER", "KIND"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse(argv)
    if args.save_models:
        sys.path.insert(0, str(ROOT))
        save_models_worker(Path(args.save_models[0]), args.save_models[1:])
        return
    if args.repeats is not None and args.repeats < 1:
        raise SystemExit("--repeats must be >= 1")
    cfg = settings(args.quick, args.repeats)
    started, load = time.perf_counter(), load_average()
    results = run_all(cfg)
    results.update(machine=machine(), load=(load, load_average()), total_s=time.perf_counter() - started)
    section = report(results, cfg, args.quick)
    write(args.out, section)
    print(section)


if __name__ == "__main__":
    main()
