"""Peak memory of ``labeler export`` on a big project: does the export stream?

A synthetic project is built without Label Studio: a SQLite database migrated and filled through
`db.repository` (one project whose labelling config has two region labels; TASKS live tasks, each
with one annotation: a brush ``lesion`` of two or three disks and a polygon ``opacity``, plus a
choice), and SIZE x SIZE 8-bit gray PNG images in a document root. Each export then runs in its
own Python process (``labeler export OUT --document-root DOCS ...`` through ``labeler.cli.main``)
and reports its peak resident set size (``ru_maxrss``) and its resident size just before the
command ran (the imports: the floor no export goes under); the figure that matters is the
difference, the memory the export itself needed.

With ``--baseline REF`` the same exports run first with the code of git commit REF (its
``labeler``, ``explain``, ``db`` and ``models`` packages, extracted with ``git archive`` into a
temporary folder and put first on PYTHONPATH), for a before / after table; each run's manifest.csv
and labels.json are compared with the current code's.

    python benchmarks/export_memory.py --out BENCHMARKS.md [--tasks 1000] [--size 512] \\
        [--formats png,npz] [--baseline a6caf67]

The results are printed and written between ``<!-- export-memory:start -->`` and
``<!-- export-memory:end -->`` in the output file.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from results import hardware, load_average, write_section  # noqa: E402  benchmarks/results.py

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- export-memory:start -->", "<!-- export-memory:end -->"
PROJECT = 7
CONFIG = """<View>
  <Image name="image" value="$image"/>
  <Choices name="diagnosis" toName="image"><Choice value="clear"/><Choice value="opacity"/></Choices>
  <BrushLabels name="mask" toName="image"><Label value="lesion"/><Label value="opacity"/></BrushLabels>
  <PolygonLabels name="outline" toName="image"><Label value="lesion"/><Label value="opacity"/></PolygonLabels>
</View>"""

# Runs in the child process: peak RSS (KiB) before and after the command, as JSON in $EXPORT_MEMORY_REPORT.
CHILD = """
import json, os, resource, sys
import labeler.cli, labeler.exporting, explain.labelstudio.fetch, explain.images  # the imports: the floor
floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
sys.argv = ["labeler", *sys.argv[1:]]
code = 0
try:
    labeler.cli.main()
except SystemExit as exc:
    code = exc.code or 0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with open(os.environ["EXPORT_MEMORY_REPORT"], "w") as report:
    report.write(json.dumps({"floor_kib": floor, "peak_kib": peak, "exit": code}))
"""


def build_project(root: Path, tasks: int, size: int, seed: int = 0) -> tuple[str, Path]:
    """(database URL, document root) of the synthetic project (see the module docstring)."""
    from db.repository import add_annotation_revision, live_task, upsert_project
    from explain.labelstudio.results import brush_result, choices_result, polygon_result
    from labeler.workspace import Workspace

    docs = root / "docs"
    (docs / "img").mkdir(parents=True)
    url = f"sqlite:///{root / 'labeler.db'}"
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    background = (40 + 120 * xx / size + 40 * yy / size).astype(np.uint8)
    with Workspace(database_url=url).sessions.begin() as session:
        project = upsert_project(session, PROJECT, title="export memory", label_config=CONFIG)
        for task_id in range(1, tasks + 1):
            lesion = np.zeros((size, size), bool)
            for _ in range(int(rng.integers(2, 4))):
                cy, cx = rng.integers(size // 8, size - size // 8, 2)
                lesion |= (yy - cy) ** 2 + (xx - cx) ** 2 <= int(rng.integers(size // 20, size // 6)) ** 2
            image = background.copy()
            image[lesion] += 40
            cv2.imwrite(str(docs / "img" / f"{task_id}.png"), image)
            x0, y0 = rng.uniform(0.05, 0.5, 2) * size
            w, h = rng.uniform(0.1, 0.4, 2) * size
            outline = np.array([[x0, y0], [x0 + w, y0], [x0 + w, y0 + h], [x0, y0 + h]])
            task = live_task(session, project, task_id, f"/data/local-files/?d=img/{task_id}.png", width=size, height=size)
            result = [
                brush_result(lesion, "lesion", "mask", "image"),
                polygon_result(outline, size, size, "opacity", "outline", "image"),
                choices_result(["opacity"], "diagnosis", "image"),
            ]
            add_annotation_revision(session, task, 1000 + task_id, "created", result, completed_by=1,
                                    ls_updated_at="2025-01-01T10:00:00Z")
    return url, docs


def run_export(code: Path, url: str, docs: Path, out: Path, fmt: str) -> dict:
    """One export in a fresh process running the code under `code`; its memory figures and time."""
    args = ["export", str(out), "--project", str(PROJECT), "--database-url", url, "--document-root", str(docs),
            "--format", fmt]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "DATABASE_URL"))}
    report_path = out.with_name(out.name + ".json")
    env.update(PYTHONPATH=str(code), TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", EXPORT_MEMORY_REPORT=str(report_path))
    started = time.perf_counter()
    child = subprocess.run([sys.executable, "-c", CHILD, *args], env=env, cwd=code, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
    seconds = time.perf_counter() - started
    stderr = child.stderr.decode(errors="replace")
    report = report_path.read_text() if report_path.is_file() else ""
    if child.returncode != 0 or not report:
        raise RuntimeError(f"export ({fmt}, {code}) failed with exit {child.returncode}: {stderr[-2000:]}")
    figures = json.loads(report)
    if figures["exit"] != 0:
        raise RuntimeError(f"export ({fmt}, {code}) exited {figures['exit']}: {stderr[-2000:]}")
    mib = 1024
    return {
        "floor_mib": figures["floor_kib"] / mib,
        "peak_mib": figures["peak_kib"] / mib,
        "export_mib": (figures["peak_kib"] - figures["floor_kib"]) / mib,
        "seconds": seconds,
        "output_mib": sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20,
    }


def extract(ref: str, into: Path) -> Path:
    """The packages of git commit `ref`, extracted into `into`."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "labeler", "explain", "db", "models"],
                             check=True, capture_output=True).stdout
    into.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def same_output(a: Path, b: Path) -> bool:
    return all((a / name).read_bytes() == (b / name).read_bytes() for name in ("manifest.csv", "labels.json", "splits.json"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--size", type=int, default=512, help="image (and mask) side, pixels")
    parser.add_argument("--formats", default="png,npz", help="comma-separated: png, coco, npz")
    parser.add_argument("--baseline", help="git commit whose export to measure first (before / after)")
    parser.add_argument("--out", type=Path, help="Markdown file to write the section into (e.g. BENCHMARKS.md)")
    args = parser.parse_args()
    formats = [f for f in args.formats.split(",") if f]
    load_start = load_average()
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="export-memory-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        url, docs = build_project(tmp / "project", args.tasks, args.size)
        build_seconds = time.perf_counter() - t0
        print(f"built {args.tasks} tasks of {args.size} x {args.size} in {build_seconds:.0f} s", flush=True)
        codes = {"after": ROOT}
        if args.baseline:
            codes = {"before": extract(args.baseline, tmp / "baseline"), **codes}
        rows = []
        for fmt in formats:
            outs = {}
            for name, code in codes.items():
                outs[name] = tmp / f"{fmt}-{name}"
                figures = run_export(code, url, docs, outs[name], fmt)
                rows.append({"format": fmt, "code": name, **figures})
                print(f"{fmt:4} {name:6} peak {figures['peak_mib']:7.0f} MiB (imports {figures['floor_mib']:.0f} MiB, "
                      f"export {figures['export_mib']:6.0f} MiB), {figures['seconds']:.0f} s, output {figures['output_mib']:.0f} MiB",
                      flush=True)
            if len(outs) == 2 and not same_output(outs["before"], outs["after"]):
                raise SystemExit(f"{fmt}: manifest.csv / labels.json / splits.json differ between before and after")
            for path in outs.values():
                subprocess.run(["rm", "-rf", str(path)], check=True)
    total = time.perf_counter() - began
    if args.out:
        write_section(args.out, START, END, section(args, rows, load_start, load_average(), build_seconds, total))
        print(f"wrote {args.out}")


def section(args, rows, load_start, load_end, build_seconds, total) -> str:
    hw = hardware()
    mask_mib = args.tasks * args.size * args.size / 2**20
    ref = f" --baseline {args.baseline}" if args.baseline else ""
    lines = [
        START,
        f"## Export memory (`labeler export`) — {datetime.date.today().isoformat()}",
        "",
        "Peak memory of an export of a big project; see `benchmarks/export_memory.py` for what is measured and how.",
        "",
        f"Machine: {hw['cpu']}, {hw['cores']} cores, {hw['ram_gib']:.1f} GiB RAM; load average {load_start} at the start, "
        f"{load_end} at the end. Python {platform.python_version()}, NumPy {np.__version__}, OpenCV {cv2.__version__}.",
        f"Command: `python benchmarks/export_memory.py --tasks {args.tasks} --size {args.size} --formats {args.formats}{ref} "
        f"--out BENCHMARKS.md` ({total / 60:.1f} min in all, the project built in {build_seconds:.0f} s).",
        "",
        f"Project: {args.tasks} tasks, {args.size} x {args.size} 8-bit gray PNG images on disk (`--document-root`), one "
        "annotation each (a brush `lesion` of 2-3 disks, a polygon `opacity`, a choice), two labels; no Label Studio "
        f"(each task its own patient). One full-size bool mask per task comes to {mask_mib:.0f} MiB for the project; the "
        f"npz arrays (images, index masks, per-label masks) to {mask_mib * 4:.0f} MiB uncompressed (after: written to "
        "scratch files in OUT during the export). Times are rough: the machine is shared (see the load).",
        "",
        "Peak RSS is `ru_maxrss` of the export's own process; \"imports\" its RSS before the command ran; "
        "\"export\" the difference.",
        "",
        "| format | code | peak RSS (MiB) | imports (MiB) | export (MiB) | time (s) | output (MiB) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['format']} | {r['code']} | {r['peak_mib']:.0f} | {r['floor_mib']:.0f} | {r['export_mib']:.0f} | "
                     f"{r['seconds']:.0f} | {r['output_mib']:.0f} |")
    lines += [
        "",
        "\"before\": every task's full-resolution masks kept until the end of the export (and, for npz, the stacked "
        "arrays built in memory); \"after\": one task in memory at a time, npz members built from scratch files in OUT. "
        "manifest.csv, labels.json and splits.json were byte-identical before and after." if args.baseline else
        "\"after\": one task in memory at a time, npz members built from scratch files in OUT.",
        "",
        END,
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
