"""``labeler stats``: how far the annotators moved the pre-labels, and how far they agree.

Read from our database only (no Label Studio call):

- **pre-label vs final**, for every current (last revision, not deleted, not cancelled)
  annotation on a live task. Label Studio's ``parent_prediction`` is its own prediction id, which
  we do not store; the pre-label taken is the task's newest stored prediction (of
  ``model_version`` when given) made before the annotation's first revision reached us (the
  earlier of that revision's ``ls_created_at`` and ``received_at``), else the task's newest
  prediction (``prediction_source`` = ``before`` / ``latest``; ``none`` when there is none).
  Regions are rasterised per label at the original size (`explain.labelstudio.results.results_to_masks`,
  the union of every brush / polygon / box of a label; what an annotator placed with the
  labelling config's smart controls, the prompts of interactive answers, is no region) and
  compared with `models.agreement`:
  Dice, IoU, HD95 per label; a task's value is the mean over the labels drawn on either side
  (HD95: over the labels where it is defined); no label on either side = agreement (1, 1, 0).
  The class choice is the first ``choices`` value (the prediction's ``predicted_class`` when its
  results hold none). "Untouched" = the same labels with pixel-identical masks and the same
  choices.
- **between annotators**, on tasks with current annotations by >= 2 different ``completed_by``
  (an annotator's newest one counts): Dice / IoU / HD95 per label for every pair, Cohen's kappa of
  the class choices per annotator pair over their shared tasks, Fleiss' kappa over the tasks
  that have the same number (>= 2) of raters who chose a class.

Written to OUT: per_task.csv (one row per annotation, worst Dice first), per_annotator.csv,
per_class.csv, per_model_version.csv, pairs.csv, summary.csv and report.html (self-contained).

Reading streams (`reading`): a fixed number of queries per chunk of tasks, each chunk's results and
masks dropped once scored; ``--since`` / ``--until`` (`window`) and ``--model-version`` filter in
the queries.

Modules: `reading` (chunks of annotations and predictions), `window` (the time window), `collect`
(chunks -> typed `Stats`), `tables` (CSV and terminal tables), `pictures`
(thumbnails, charts) and `report` (report.html from the ``templates/report.html`` Jinja2 template).
"""
from __future__ import annotations

from pathlib import Path

from labeler.stats.collect import Stats, check_database, collect
from labeler.stats.report import render_html
from labeler.stats.tables import Tables, build_tables, write_tables
from labeler.stats.window import Window, parse_window

__all__ = ["Stats", "Tables", "Window", "build_tables", "check_database", "collect", "parse_window", "run", "write_report"]


def write_report(stats: Stats, tables: Tables, out: Path) -> list[Path]:
    """Write the CSV files and report.html into `out` (created); returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = write_tables(tables, out)
    report = out / "report.html"
    report.write_text(render_html(stats, tables), encoding="utf-8")
    return [*written, report]


def run(
    database_url: str,
    ls_project_id: int,
    out: Path,
    model_version: str | None = None,
    label_studio: str | None = None,
    window: Window = Window(),
) -> tuple[Stats, Tables]:
    """Read the project's statistics (of the annotations updated in `window`) from the database
    and write them to `out`."""
    from labeler.workspace import Workspace

    check_database(database_url)
    sessions = Workspace(database_url=database_url, project_id=ls_project_id, writes=False).sessions
    engine = sessions.kw["bind"]
    if engine.dialect.name == "sqlite":  # a long read: neither block the backend's writes nor wait for them
        engine = engine.execution_options(sqlite_begin="DEFERRED")
    with sessions(bind=engine) as session:
        stats = collect(session, ls_project_id, model_version, label_studio, window)
    tables = build_tables(stats)
    write_report(stats, tables, out)
    return stats, tables
