"""Time and peak memory of ``labeler stats`` as the project grows: does it stream?

A synthetic project is built for each size N without Label Studio: a SQLite database migrated and
filled through `db.repository` (N live tasks of SIZE x SIZE pixels, each with one prediction of a
brush ``opacity`` region and a choice, and two annotators' annotations: a moved brush region and
a choice; results drawn from a pool of random masks so that building is quick). Each ``labeler
stats`` then runs in its own Python process (``labeler.cli.main``) and reports its wall time
(imports left out) and its peak resident set size (``ru_maxrss``), and the resident size after
the imports (the floor). Time and peak are fitted as a + b * N and extrapolated to 100,000 tasks.

With ``--baseline REF`` the same command first runs the code of git commit REF (its packages
extracted with ``git archive`` and put first on PYTHONPATH) on a copy of the database migrated
down to that code's head (``--baseline-revision``, default 0005), and its CSV files are compared
with the current code's.

    python benchmarks/stats_scale.py [--tasks 2000,8000] [--size 256] [--baseline 1a8e036] [--out BENCHMARKS.md]

With ``--out`` the table is written between ``<!-- stats-scale:start -->`` and ``<!-- stats-scale:end -->``.
"""
from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import hardware, load_average, write_section  # noqa: E402  benchmarks/results.py

START, END = "<!-- stats-scale:start -->", "<!-- stats-scale:end -->"

ROOT = Path(__file__).resolve().parent.parent
PROJECT = 7
POOL = 64

CHILD = """
import json, os, resource, sys, time
import labeler.cli, labeler.stats, labeler.stats.collect, numpy, scipy.ndimage  # the imports: the floor
floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
sys.argv = ["labeler", *sys.argv[1:]]
code = 0
started = time.perf_counter()
try:
    labeler.cli.main()
except SystemExit as exc:
    code = exc.code or 0
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with open(os.environ["STATS_SCALE_REPORT"], "w") as report:
    report.write(json.dumps({"floor_kib": floor, "peak_kib": peak, "seconds": seconds, "exit": code}))
"""


def result_pool(size: int, seed: int = 0) -> list[tuple[list[dict], list[dict], list[dict]]]:
    """POOL (prediction, annotation 1, annotation 2) result lists of random disks."""
    from explain.labelstudio.results import brush_result, choices_result

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]

    def disk(cy, cx, r):
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r

    pool = []
    for _ in range(POOL):
        cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
        r = int(rng.integers(size // 10, size // 4))
        lists = []
        for shift in (0, 4, -6):
            mask = disk(cy + shift, cx - shift, r + shift // 2)
            cls = "opacity" if shift >= 0 or rng.random() < 0.5 else "clear"
            lists.append([choices_result([cls], "diagnosis", "image"), brush_result(mask, "opacity", "mask", "image")])
        pool.append(tuple(lists))
    return pool


def build_project(url: str, tasks: int, size: int) -> None:
    from db.repository import add_annotation_revision, add_prediction, live_task, model_version, upsert_project
    from labeler.workspace import Workspace

    pool = result_pool(size)
    with Workspace(database_url=url).sessions.begin() as session:
        project = upsert_project(session, PROJECT, title="stats scale")
        version = model_version(session, "mv-1", "w", {})
        for n in range(1, tasks + 1):
            predicted, first, second = pool[n % POOL]
            task = live_task(session, project, n, f"/data/upload/{n}.png", width=size, height=size)
            add_prediction(session, task, version, {"opacity": 0.7, "clear": 0.3}, "opacity", 0.7, "opacity", None, predicted)
            for who, result in ((1, first), (2, second)):
                add_annotation_revision(session, task, 10 * n + who, "created", result, completed_by=who,
                                        ls_updated_at="2025-01-01T10:00:00Z")


def run_stats(code: Path, url: str, out: Path) -> dict:
    args = ["stats", "--project", str(PROJECT), "--database-url", url, "--out", str(out)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "DATABASE_URL"))}
    report = out.with_name(out.name + ".json")
    env.update(PYTHONPATH=str(code), TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", STATS_SCALE_REPORT=str(report))
    child = subprocess.run([sys.executable, "-c", CHILD, *args], env=env, cwd=code, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
    figures = json.loads(report.read_text()) if report.is_file() else {}
    if child.returncode != 0 or figures.get("exit", 1) != 0:
        raise RuntimeError(f"stats ({code}) failed: {child.stderr.decode(errors='replace')[-2000:]}")
    return {"seconds": figures["seconds"], "peak_mib": figures["peak_kib"] / 1024,
            "stats_mib": (figures["peak_kib"] - figures["floor_kib"]) / 1024}


def extract(ref: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "labeler", "explain", "db", "models"],
                             check=True, capture_output=True).stdout
    into.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def downgraded_copy(db_file: Path, into: Path, revision: str) -> str:
    """A copy of the SQLite file at `into`, migrated down to `revision` (the baseline's head)."""
    from alembic import command

    from db.migrating import alembic_config

    with sqlite3.connect(db_file) as source, sqlite3.connect(into) as target:  # the WAL's pages too
        source.backup(target)
    url = f"sqlite:///{into}"
    command.downgrade(alembic_config(url), revision)
    return url


def fit(ns: list[int], values: list[float]) -> tuple[float, float]:
    """(a, b) of the least-squares line a + b * N."""
    b, a = np.polyfit(np.array(ns, float), np.array(values, float), 1)
    return float(a), float(b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="2000,8000", help="comma-separated project sizes")
    parser.add_argument("--size", type=int, default=256, help="mask side, pixels")
    parser.add_argument("--baseline", help="git commit whose stats to measure first (before / after)")
    parser.add_argument("--baseline-revision", default="0005", help="the baseline code's migration head")
    parser.add_argument("--out", type=Path, help="Markdown file to write the section into (e.g. BENCHMARKS.md)")
    args = parser.parse_args()
    sizes = [int(n) for n in args.tasks.split(",") if n]
    rows: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="stats-scale-") as tmp:
        tmp = Path(tmp)
        codes = {"after": ROOT}
        if args.baseline:
            codes = {"before": extract(args.baseline, tmp / "baseline"), **codes}
        for n in sizes:
            db_file = tmp / f"{n}.db"
            t0 = time.perf_counter()
            build_project(f"sqlite:///{db_file}", n, args.size)
            print(f"built {n} tasks ({args.size} px masks, 2 annotations each) in {time.perf_counter() - t0:.0f} s, "
                  f"database {sum(p.stat().st_size for p in tmp.glob(f'{n}.db*')) / 2**20:.0f} MiB", flush=True)
            outs = {}
            for name, code in codes.items():
                url = f"sqlite:///{db_file}"
                if name == "before":
                    url = downgraded_copy(db_file, tmp / f"{n}-before.db", args.baseline_revision)
                outs[name] = tmp / f"out-{n}-{name}"
                figures = run_stats(code, url, outs[name])
                rows.setdefault(name, []).append({"tasks": n, **figures})
                print(f"{n:7d} tasks {name:6} {figures['seconds']:7.1f} s  peak {figures['peak_mib']:6.0f} MiB "
                      f"(stats itself {figures['stats_mib']:5.0f} MiB)", flush=True)
            if len(outs) == 2:
                for csv in sorted(p.name for p in outs["after"].glob("*.csv")):
                    if (outs["before"] / csv).read_bytes() != (outs["after"] / csv).read_bytes():
                        raise SystemExit(f"{csv} differs between before and after at {n} tasks")
                print(f"{n:7d} tasks: every CSV file identical before and after", flush=True)
    if len(sizes) >= 2:
        for name, measured in rows.items():
            ns = [r["tasks"] for r in measured]
            for key, unit in (("seconds", "s"), ("peak_mib", "MiB"), ("stats_mib", "MiB")):
                a, b = fit(ns, [r[key] for r in measured])
                print(f"{name:6} {key:9} ~ {a:8.1f} + {b * 1000:8.3f} {unit} per 1,000 tasks; "
                      f"100,000 tasks: {a + b * 100_000:9.0f} {unit}; 1,000,000: {a + b * 1_000_000:9.0f} {unit}")
    if args.out:
        command = " ".join(["python", "benchmarks/stats_scale.py", *sys.argv[1:]])
        write_section(args.out, START, END, section(rows, args.size, command))


def section(rows: dict[str, list[dict]], size: int, command: str) -> str:
    """The Markdown table of every run: time and peak memory per size, fitted per 1,000 tasks."""
    hw = hardware()
    lines = [
        START, "## `labeler stats` as the project grows", "",
        f"`{command}` on {time.strftime('%Y-%m-%d')}, {hw['cpu']}, {hw['cores']} cores, {hw['ram_gib']:.0f} GiB, "
        f"load average {load_average()}; SQLite; {size} px masks, one prediction and two annotators per task; "
        "each run in its own process (time without the imports, peak RSS).",
        "", "| code | tasks | seconds | peak RSS |", "|---|---:|---:|---:|",
    ]
    for name, measured in rows.items():
        lines += [f"| {name} | {r['tasks']:,} | {r['seconds']:.1f} s | {r['peak_mib']:.0f} MiB |" for r in measured]
        if len(measured) >= 2:
            ns = [r["tasks"] for r in measured]
            (_, ds), (_, dm) = fit(ns, [r["seconds"] for r in measured]), fit(ns, [r["peak_mib"] for r in measured])
            lines.append(f"| {name} | per 1,000 more | {ds * 1000:+.1f} s | {dm * 1000:+.1f} MiB |")
    lines.append(END)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
