"""The ``labeler`` command line."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from explain.sources import SOURCES
from labeler.workspace import DEFAULT_DATABASE, ApiKey, DatabaseUrl, LabelStudioUrl, ProjectId, Workspace

# soft_wrap: long lines (paths) are not broken at the terminal width, so that every error stays one line.
console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)


def one_line_message(exc: BaseException) -> str | None:
    """The `error:` text for an expected failure (bad input, missing files, Label Studio unreachable
    or refusing, a database that cannot be opened: `db.engine.DatabaseUnavailable` is a ValueError);
    None for anything else, which is a bug and keeps its traceback."""
    import httpx
    from label_studio_sdk.core.api_error import ApiError

    if isinstance(exc, (ValueError, FileNotFoundError, OSError)):
        return str(exc)
    if isinstance(exc, ApiError):
        detail = exc.body.get("detail") if isinstance(exc.body, dict) else None
        return f"Label Studio answered HTTP {exc.status_code}" + (f": {detail}" if detail else "")
    if isinstance(exc, httpx.HTTPError):
        return f"cannot reach Label Studio: {type(exc).__name__}"
    return None


class OneLineErrors(TyperGroup):
    """Every command runs through `invoke`, from `labeler` (`main`) and from `CliRunner().invoke(app)`
    alike: an expected failure ends with one 'error:' line and exit code 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Exception as exc:
            message = one_line_message(exc)
            if message is None:
                raise
        errors.print(f"error: {message}", markup=False, highlight=False)
        raise typer.Exit(2)


app = typer.Typer(
    cls=OneLineErrors,
    help="Grad-CAM pre-labelling assistant for Label Studio.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals may hold image data
)


def prelabel_settings(
    method, layer, target, threshold, min_area, max_vertices, source="gradcam", segmenter_threshold="value:0.5",
    min_probability=0.0, shape="grabcut",
):
    from explain.prelabel import prelabel_settings as settings

    if shape not in SHAPE_NAMES:
        raise ValueError(f"--shape must be one of {', '.join(SHAPE_NAMES)}, got {shape!r}")
    return settings(
        method=method, layer=layer, target=target, cam_threshold=threshold, segmenter_threshold=segmenter_threshold,
        min_area=min_area, max_vertices=max_vertices, source=source, min_probability=min_probability, shape=shape,
    )


def prior_settings(margin: float):
    """The anatomy prior's settings (ValueError naming --roi-margin when it is out of range)."""
    from explain.anatomy import PriorSettings

    try:
        return PriorSettings(margin=margin)
    except ValueError as exc:
        raise ValueError(f"--roi-margin: {exc}") from None


METHOD_NAMES = ("gradcam", "guided", "gradcam++", "hirescam", "layercam")  # explain.methods.METHODS (a test keeps them equal)
Method = Annotated[str, typer.Option(help=f"CAM method: {', '.join(METHOD_NAMES)}.")]
SHAPE_NAMES = ("map", "intensity", "random_walker", "watershed", "grabcut", "slic")  # explain.shapes.SHAPES (a test keeps them equal)
ShapeOption = Annotated[
    str, typer.Option("--shape", help=f"How a region is outlined: {', '.join(SHAPE_NAMES)} ('map': the thresholded map; the others follow the image).")
]
SourceOption = Annotated[
    str, typer.Option("--source", help="Where regions come from: " + "; ".join(f"{n}: {s.summary}" for n, s in SOURCES.items()) + ".")
]
SegmenterOption = Annotated[
    Optional[Path], typer.Option("--segmenter", help="U-Net from train-segmenter (needed by the segmenter and fusion sources).")
]
SegmenterThreshold = Annotated[
    str, typer.Option("--segmenter-threshold", help="Where segmenter / fusion maps are cut: value:P, fraction:F, percentile:P or otsu.")
]
RoiModelOption = Annotated[
    Optional[Path],
    typer.Option("--roi-model", help="Anatomy prior: a lung segmenter from train-segmenter; regions stay inside its lungs."),
]
RoiMargin = Annotated[float, typer.Option("--roi-margin", help="The lungs' dilation, as a fraction of the image's shorter side.")]
NO_PRIOR_NOTE = "note: no anatomy prior (--roi-model): regions may land outside the lungs"
Layer = Annotated[Optional[str], typer.Option(help="Target layer (default: the spec's, else the last 4-D layer).")]
TargetOption = Annotated[str, typer.Option("--target", help="'predicted', a class name, or 'above:P' for every class with probability >= P.")]
ThresholdOption = Annotated[str, typer.Option("--threshold", help="fraction:F (of the max), percentile:P or otsu.")]
MinArea = Annotated[float, typer.Option(help="Smallest region, as a fraction of the image area.")]
MaxVertices = Annotated[int, typer.Option(help="Polygon vertex budget.")]
MinProbability = Annotated[
    float, typer.Option(min=0.0, max=0.999, help="No regions for a class less probable than this (0: always draw).")
]
DocumentRoot = Annotated[
    Optional[Path],
    typer.Option("--document-root", envvar="LOCAL_FILES_DOCUMENT_ROOT", help="Label Studio's LOCAL_FILES_DOCUMENT_ROOT."),
]


@app.command()
def explain(
    images: Annotated[list[Path], typer.Argument(help="PNG, JPEG or DICOM files.")],
    model: Annotated[Path, typer.Option(help="Classifier (.keras, .h5 or SavedModel folder) with its spec beside it.")],
    out: Annotated[Path, typer.Option(help="Folder for the pictures, masks and Label Studio JSON.")],
    method: Method = "layercam",
    layer: Layer = None,
    target: TargetOption = "predicted",
    threshold: ThresholdOption = "fraction:0.2",
    min_area: MinArea = 0.001,
    max_vertices: MaxVertices = 64,
    min_probability: MinProbability = 0.0,
    shape: ShapeOption = "grabcut",
    colormap: Annotated[str, typer.Option(help="jet, turbo, inferno, magma, viridis, hot or bone.")] = "jet",
    batch_size: Annotated[int, typer.Option(help="Images per model call.")] = 16,
    roi_model: RoiModelOption = None,
    roi_margin: RoiMargin = 0.03,
):
    """Heatmaps, masks and Label Studio pre-labels for images: the reference article's picture."""
    from explain.overlay import COLORMAPS
    from labeler.explaining import explain_files

    settings = prelabel_settings(
        method, layer, target, threshold, min_area, max_vertices, min_probability=min_probability, shape=shape
    )
    prior = prior_settings(roi_margin)
    if colormap not in COLORMAPS:
        raise ValueError(f"--colormap must be one of {sorted(COLORMAPS)}, got {colormap!r}")
    outcomes = explain_files(
        images, model, out, settings, colormap=colormap, batch_size=batch_size, roi_model_path=roi_model, prior=prior
    )
    table = Table("image", "predicted", "probabilities", "regions")
    failed = 0
    for outcome in outcomes:
        if outcome.error:
            failed += 1
            errors.print(f"error: {outcome.error}", markup=False, highlight=False)
            continue
        probabilities = "  ".join(f"{k} {v:.3f}" for k, v in outcome.prelabel.probabilities.items())
        regions = sum(len(c.regions) for c in outcome.prelabel.classes)
        table.add_row(outcome.path.name, outcome.prelabel.predicted, probabilities, str(regions))
    console.print(table)
    console.print(f"wrote {len(outcomes) - failed} image(s) to {out}")
    if failed:
        raise typer.Exit(1)


@app.command("train-classifier")
def train_classifier(
    data_dir: Annotated[Path, typer.Argument(help="One sub-folder of images per class.")],
    out: Annotated[Path, typer.Option(help="Where to save the model (.keras or .h5); the spec goes beside it.")],
    arch: Annotated[str, typer.Option(help="small-cnn or inception (the article's InceptionV3).")] = "small-cnn",
    size: Annotated[int, typer.Option(help="Square input size in pixels.")] = 128,
    epochs: Annotated[int, typer.Option(min=1)] = 10,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    val_split: Annotated[float, typer.Option(help="Fraction of each class held out for validation.")] = 0.2,
    learning_rate: Annotated[float, typer.Option()] = 1e-3,
    weights: Annotated[Optional[Path], typer.Option(help="Local InceptionV3 no-top weights file (never downloaded).")] = None,
    augment: Annotated[bool, typer.Option(help="Random rotation, zoom, shift and contrast while training.")] = True,
    patients: Annotated[Optional[Path], typer.Option(
        help="CSV with columns file,patient (file: path relative to DATA_DIR or name); a patient's images "
        "stay on one side of the validation split, unlisted images are their own patient.")] = None,
    class_weights: Annotated[bool, typer.Option(help="Weight the loss by inverse class frequency.")] = True,
    seed: Annotated[int, typer.Option()] = 0,
):
    """Train a classifier on DATA_DIR/<class>/<images> and save it with its spec and the validation
    confusion matrix (MODEL.confusion.csv)."""
    import keras

    from rich.markup import escape

    from labeler.class_folders import load_resized, read_patients, scan_class_folders
    from models.classifiers import ARCHITECTURES
    from models.loading import save_classifier, weights_version
    from models.training import save_confusion
    from models.training import train_classifier as fit

    if arch not in ARCHITECTURES:
        raise ValueError(f"--arch must be one of {sorted(ARCHITECTURES)}, got {arch!r}")
    if out.suffix not in (".keras", ".h5"):
        raise ValueError(f"--out must end in .keras or .h5, got {out.name!r}")
    paths, labels, class_names = scan_class_folders(data_dir)
    patient_ids = None if patients is None else read_patients(patients, data_dir, paths)
    options = {"weights": weights} if arch == "inception" else {}
    keras.utils.set_random_seed(seed)  # the initial weights too, so that --seed reproduces a run
    model, spec = ARCHITECTURES[arch](class_names=class_names, input_size=(size, size), **options)
    images, kept, skipped = load_resized(paths, spec.input_size)
    for line in skipped:
        errors.print(f"skipped: {line}", markup=False, highlight=False)
    counts = ", ".join(f"{name} {int((labels[kept] == i).sum())}" for i, name in enumerate(class_names))
    console.print(f"{len(kept)} images ({counts}); training {arch} at {size}x{size} for {epochs} epochs")
    report = fit(
        model, spec, images, labels[kept], epochs=epochs, batch_size=batch_size, val_fraction=val_split,
        learning_rate=learning_rate, seed=seed, augment=augment, verbose=1 if sys.stdout.isatty() else 2,
        patients=None if patient_ids is None else patient_ids[kept], balance_classes=class_weights,
    )
    save_classifier(model, spec, out)
    if report.class_weights is not None:
        shown = ", ".join(f"{class_names[i]} {w:.3f}" for i, w in report.class_weights.items())
        console.print(f"class weights: {shown}")
    val = "n/a" if report.val_accuracy is None else f"{report.val_accuracy:.3f}"
    console.print(
        f"saved {out} (version {weights_version(model)}), epoch {report.best_epoch} of {report.epochs}: "
        f"train accuracy {report.train_accuracy:.3f}, validation accuracy {val}"
    )
    confusion_path = out.with_name(f"{out.stem}.confusion.csv")
    if report.confusion is None:
        confusion_path.unlink(missing_ok=True)  # an earlier run's matrix would describe another model
        return
    save_confusion(report.confusion, class_names, confusion_path)
    table = Table(title=f"validation confusion, {int(report.confusion.sum())} images (rows true, columns predicted)")
    table.add_column("true \\ predicted")
    for name in class_names:
        table.add_column(escape(name), justify="right")
    table.add_column("recall", justify="right")
    for name, row, hits in zip(class_names, report.confusion, report.confusion.diagonal()):
        recall = f"{hits / row.sum():.3f}" if row.sum() else "n/a"
        table.add_row(escape(name), *(str(int(v)) for v in row), recall)
    console.print(table)
    console.print(f"saved {confusion_path}")
    largest, rate = report.majority_baseline()
    accuracy = float(report.confusion.trace() / report.confusion.sum())  # exact, unlike Keras' float32 metric
    if accuracy <= rate:
        errors.print(
            f"warning: validation accuracy {accuracy:.3f} does not beat always guessing "
            f"'{class_names[largest]}' ({rate:.3f})", markup=False, highlight=False,
        )


@app.command("train-segmenter")
def train_segmenter(
    export_dir: Annotated[Path, typer.Argument(help="A `labeler export --format png` folder, or a folder of image / mask pairs: images/<name>.png|jpg and masks/<name>.png (0/255 or 0/1).")],
    out: Annotated[Path, typer.Option(help="Where to save the U-Net (.keras or .h5); the spec goes beside it.")],
    size: Annotated[int, typer.Option(min=16, help="Square input size in pixels (a multiple of 8).")] = 128,
    epochs: Annotated[int, typer.Option(min=1)] = 30,
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    learning_rate: Annotated[float, typer.Option()] = 1e-3,
    filters: Annotated[str, typer.Option(help="Filters per U-Net level, comma-separated.")] = "16,32,64,128",
    max_tasks: Annotated[Optional[int], typer.Option(help="Train on a seeded subset of this many train tasks.")] = None,
    augment: Annotated[bool, typer.Option(help="The same random rotation, zoom and shift for image and mask.")] = True,
    seed: Annotated[int, typer.Option()] = 0,
    label: Annotated[str, typer.Option(help="The label of a pairs folder's masks (an export names its own).")] = "Lungs",
    val_fraction: Annotated[
        Optional[float], typer.Option(help="Images held out (seeded) to validate: default 0.2 of a pairs folder, 0.15 of an export without a val split; 0: none (the last epoch is kept).")
    ] = None,
    clicks: Annotated[bool, typer.Option("--clicks", help="Train a click model (CLICK_MODEL): it answers an annotator's clicks from the image, learnt by simulating them.")] = False,
):
    """Train a U-Net on the corrected masks of an export's train split (its val split validates), or
    on a folder of image / mask pairs, e.g. lung masks for the anatomy prior (--roi-model); with
    --clicks, a click model for click-to-segment."""
    from labeler.segmenting import train_on_export

    try:
        levels = tuple(int(f) for f in filters.split(","))
    except ValueError:
        raise ValueError(f"--filters must be numbers like 16,32,64,128, got {filters!r}") from None
    result = train_on_export(
        export_dir, out, size=size, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
        filters=levels, seed=seed, augment=augment, max_tasks=max_tasks, verbose=1 if sys.stdout.isatty() else 2,
        label=label, val_fraction=val_fraction, clicks=clicks,
    )
    report = result.report
    val = "n/a" if report.val_dice is None else f"{report.val_dice:.3f}"
    scores = (f"train loss {report.train_loss:.3f}, validation Dice over 1-5 simulated clicks {val}" if clicks
              else f"train Dice {report.train_dice:.3f}, validation Dice {val}")
    console.print(
        f"saved {out} (version {result.version}; labels {', '.join(result.labels)}; {result.train_tasks} train / "
        f"{result.val_tasks} val tasks), epoch {report.best_epoch} of {report.epochs}: {scores}"
    )


@app.command("evaluate-segmenter")
def evaluate_segmenter(
    model: Annotated[Path, typer.Argument(help="A segmenter saved by train-segmenter.")],
    export_dir: Annotated[Path, typer.Argument(help="A `labeler export --format png` folder.")],
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    threshold: Annotated[str, typer.Option(help="value:P (probability), fraction:F, percentile:P or otsu.")] = "value:0.5",
    min_area: MinArea = 0.001,
    csv_out: Annotated[Optional[Path], typer.Option("--csv", help="Also write per-task scores to this CSV file.")] = None,
):
    """Score a segmenter's pre-labels on one split of an export against the corrected masks, side by
    side with the export's own pre-labels (export --predictions) where it has them."""
    from labeler.segmenting import evaluate_segmenter as evaluate, write_rows

    summaries, rows = evaluate(model, export_dir, split, threshold, min_area)
    table = Table("label", "tasks", "Dice", "IoU", "edit", "fp", "fp_any", "pre-label Dice", "pre-label IoU", "pre-label edit")
    number = lambda v: "n/a" if v is None else f"{v:.3f}"
    for s in summaries:
        table.add_row(s.label, str(s.tasks), *(number(v) for v in (s.dice, s.iou, s.edit, s.fp, s.fp_any, s.prelabel_dice, s.prelabel_iou, s.prelabel_edit)))
    console.print(table)
    if csv_out:
        write_rows(rows, csv_out)
        console.print(f"wrote {csv_out}")


@app.command("demo-data")
def demo_data(
    out: Annotated[Path, typer.Argument(help="Folder to write OUT/images/<class>/*.png, OUT/masks/*.png (lesions) and OUT/lungs/*.png into.")],
    per_class: Annotated[int, typer.Option(min=1)] = 60,
    size: Annotated[int, typer.Option(min=32)] = 128,
    seed: Annotated[int, typer.Option()] = 0,
):
    """Write synthetic radiograph-like images (classes clear / opacity, with lesion masks)."""
    from labeler.synthetic import write_dataset

    write_dataset(out, per_class, size, seed)
    console.print(f"wrote {2 * per_class} images to {out}")


@app.command()
def init(
    model: Annotated[Path, typer.Option(help="The classifier whose spec names the classes.")],
    title: Annotated[str, typer.Option(help="Project title.")] = "Chest X-ray lesions",
    backend_url: Annotated[Optional[str], typer.Option(help="The ML backend to connect, e.g. http://127.0.0.1:9090.")] = None,
    region_label: Annotated[
        Optional[list[str]], typer.Option(help="Region label (repeat); default: Opacity, which every non-normal class fills.")
    ] = None,
    region_kind: Annotated[
        Optional[list[str]], typer.Option(help="brush and / or polygon (repeat); default: brush, one region per area.")
    ] = None,
    interactive: Annotated[
        bool, typer.Option(help="Click to segment: smart keypoint and rectangle tools in the config, and the backend "
                           "connected for interactive pre-annotations.")
    ] = False,
    label_studio_url: LabelStudioUrl = None,
    api_key: ApiKey = None,
    project: ProjectId = None,
):
    """Create (or with --project update) a project whose labelling config comes from the model spec."""
    from labeler.project import init_project

    ws = Workspace(label_studio_url, api_key, project)
    project_id = init_project(ws, model, title, backend_url, region_label or None, region_kind or None, interactive)
    console.print(f"project {project_id} ready" + (f", backend {backend_url} connected" if backend_url else ""))
    console.print(f"LABEL_STUDIO_PROJECT={project_id}")


@app.command("import")
def import_command(
    paths: Annotated[
        Optional[list[Path]], typer.Argument(help="Image files or folders (PNG, JPEG, DICOM; folders searched recursively).")
    ] = None,
    manifest: Annotated[
        Optional[Path],
        typer.Option(help="CSV with a header: path (relative to the CSV's folder, or absolute), and optionally "
                     "patient, study, date, split (train/val/test) and any other column, kept as task data."),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Tasks per bulk request to Label Studio.")] = 250,
    document_root: DocumentRoot = None,
    label_studio_url: LabelStudioUrl = None,
    api_key: ApiKey = None,
    project: ProjectId = None,
    database_url: DatabaseUrl = DEFAULT_DATABASE,
):
    """Add images to the project as PNG under Label Studio's document root, skipping files already
    imported (same source path, without reading them) and images already there (same content). Each
    task records its source path and, when known, its patient as a keyed hash (of the manifest's
    patient id, else of the DICOM PatientID; secret: the database's, or PATIENT_KEY_SECRET). A project
    with old unkeyed patient values is refused until `labeler rekey-patients` has converted them.
    A rerun after a kill or an error goes on where it stopped."""
    from labeler.importing import import_images

    if document_root is None:
        raise ValueError("--document-root (Label Studio's LOCAL_FILES_DOCUMENT_ROOT) is required")
    ws = Workspace(label_studio_url, api_key, project, database_url)
    report = import_images(ws, paths or [], document_root, manifest=manifest, batch=batch_size)
    for line in report.errors:
        errors.print(f"error: {line}", markup=False, highlight=False)
    if report.recovered:
        console.print(f"recorded {report.recovered} task(s) that an interrupted import had created")
    if report.adopted:
        console.print(f"recorded {report.adopted} task(s) of the project that our database did not know")
    console.print(f"imported {report.added}, skipped {report.skipped} already in the project, {len(report.errors)} failed")
    if report.errors:
        raise typer.Exit(1)


@app.command("rekey-patients")
def rekey_patients(
    label_studio_url: LabelStudioUrl = None,
    api_key: ApiKey = None,
    project: ProjectId = None,
    database_url: DatabaseUrl = DEFAULT_DATABASE,
):
    """Replace the project's old, reversible patient values (unsalted PatientID hashes) by keyed
    ones, the same a fresh import gives; idempotent and resumable."""
    from labeler.patients import rekey_project

    report = rekey_project(Workspace(label_studio_url, api_key, project, database_url, writes=False))
    console.print(f"re-keyed {report.rekeyed} task(s), {report.already} already keyed")


@app.command()
def prelabel(
    model: Annotated[Path, typer.Option(help="Classifier with its spec beside it.")],
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    method: Method = "layercam",
    layer: Layer = None,
    target: TargetOption = "predicted",
    threshold: ThresholdOption = "fraction:0.2",
    min_area: MinArea = 0.001,
    max_vertices: MaxVertices = 64,
    min_probability: MinProbability = 0.0,
    source: Annotated[
        Optional[str], typer.Option("--source", help="Where regions come from (default: the project's promoted segmenter "
                                    "when it has one, else gradcam): " + "; ".join(f"{n}: {s.summary}" for n, s in SOURCES.items()) + ".")
    ] = None,
    segmenter: SegmenterOption = None,
    segmenter_threshold: SegmenterThreshold = "value:0.5",
    roi_model: RoiModelOption = None,
    roi_margin: RoiMargin = 0.03,
    shape: ShapeOption = "grabcut",
    document_root: DocumentRoot = None,
    label_studio_url: LabelStudioUrl = None,
    api_key: ApiKey = None,
    project: ProjectId = None,
    database_url: DatabaseUrl = DEFAULT_DATABASE,
    claim_lease: Annotated[float, typer.Option(min=1, help="Seconds after which another worker may take over "
                                               "tasks this one claimed and has not finished (several workers on one project).")] = 600.0,
    fast_import: Annotated[bool, typer.Option(
        "--fast-import/--no-fast-import", envvar="LABEL_STUDIO_FAST_IMPORT",
        help="Label Studio runs with its constant-cost prediction import (the feature flag of labeler.posting."
             "FAST_IMPORT_FLAG, set in docker-compose.yml): post in bulk at any project size.")] = False,
):
    """Pre-label every task without a prediction of this model version (resumable; several workers may share a project) and report throughput."""
    from labeler.prelabeling import prelabel_project
    from labeler.training import promoted_segmenter

    ws = Workspace(label_studio_url, api_key, project, database_url)
    if source is not None and source not in SOURCES:
        raise ValueError(f"--source must be one of {', '.join(SOURCES)}, got {source!r}")

    def settings_of(source):
        return prelabel_settings(
            method, layer, target, threshold, min_area, max_vertices, source, segmenter_threshold,
            min_probability=min_probability, shape=shape,
        )

    settings = settings_of(source or "gradcam")  # bad options fail here, before any connection
    prior = prior_settings(roi_margin)
    if roi_model is None:
        errors.print(NO_PRIOR_NOTE, markup=False, highlight=False)
    if source is None and segmenter is not None:
        settings = settings_of("segmenter")
    elif source is None and (promoted := promoted_segmenter(ws)):  # as the backend does
        segmenter, settings = promoted[1], settings_of("segmenter")
        errors.print(f"note: pre-labelling with the project's promoted segmenter #{promoted[0]} (--source gradcam: Grad-CAM)", markup=False, highlight=False)
    report = prelabel_project(
        ws, model, settings, batch_size, document_root, segmenter_path=segmenter, roi_model_path=roi_model, prior=prior,
        claim_lease_s=claim_lease, fast_import=fast_import,
    )
    for line in report.failed:
        errors.print(f"error: {line}", markup=False, highlight=False)
    console.print(
        f"pre-labelled {report.predicted} task(s) in {report.seconds:.1f} s ({report.images_per_second:.2f} images/s), "
        f"{report.skipped} already had {report.version}, {len(report.failed)} failed"
        + (f"; re-posted {report.reposted} stored prediction(s) Label Studio lacked" if report.reposted else "")
        + (f"; {report.elsewhere} taken by other workers" if report.elsewhere else "")
    )
    if report.failed:
        raise typer.Exit(1)


@app.command()
def train(
    wait: Annotated[bool, typer.Option("--wait", help="Follow the job until it ends (exit 1 when it fails).")] = False,
    timeout: Annotated[float, typer.Option(min=1, help="With --wait: give up after this many seconds.")] = 3600,
    label_studio_url: LabelStudioUrl = None,
    project: ProjectId = None,
    database_url: DatabaseUrl = DEFAULT_DATABASE,
):
    """Queue a segmenter training on the project's corrected masks (run by the backend or `labeler-backend worker`)."""
    from labeler.training import queue_training, wait_for

    ws = Workspace(label_studio_url, None, project, database_url)
    job, created = queue_training(ws)
    console.print(f"training job {job.id} {'queued' if created else 'was already queued'} for project {ws.project_id}")
    if not wait:
        return
    final = wait_for(ws, job.id, timeout, lambda v: console.print(f"job {v.id}: {v.state}" + (f", {v.progress}" if v.progress else ""), markup=False))
    console.print(f"job {final.id} {final.state}: {final.message}", markup=False)
    if final.state == "failed":
        raise typer.Exit(1)


models_app = typer.Typer(cls=OneLineErrors, no_args_is_help=True, help="A project's trained segmenters and click models: list, promote, roll back.")
app.add_typer(models_app, name="models")


def _score(metrics: dict, who: str, role: str) -> str:
    values = metrics.get(who) or {}
    edit, dice = values.get("edit"), values.get("dice")
    if role == "clicks":  # backend.training._click_scores
        return "-" if dice is None else f"{dice:.3f}"
    return "-" if edit is None else f"{edit:.3f}/" + ("-" if dice is None else f"{dice:.3f}")


def _answers_clicks(current: int | None) -> str:
    return f"click model #{current}" if current else "CLICK_MODEL, else the maps alone (no promoted click model)"


@models_app.command("list")
def models_list(
    label_studio_url: LabelStudioUrl = None,
    project: ProjectId = None,
    database_url: DatabaseUrl = DEFAULT_DATABASE,
):
    """The project's segmenters and click models (newest first), which ones are current, and the recent training jobs."""
    from labeler.training import project_models

    models, jobs, current = project_models(Workspace(label_studio_url, None, project, database_url))
    say = lambda text: console.print(text, markup=False, highlight=False)  # noqa: E731
    say(f"pre-labels come from: {'segmenter #' + str(current['prelabel']) if current['prelabel'] else 'Grad-CAM (no promoted segmenter)'}")
    say(f"clicks answered by: {_answers_clicks(current['clicks'])}")
    for m in models:  # one line each (greppable; `*` marks a current one)
        counts = "/".join(str(m.counts.get(k, 0)) for k in ("train", "val", "test"))
        kind, score = ("click model", f"Dice over {m.metrics.get('clicks', '?')} clicks") if m.role == "clicks" else ("segmenter", "edit/Dice")
        say(
            f"{'*' if m.current else ' '} #{m.id}  {kind}  {m.created_at:%Y-%m-%d %H:%M}  weights {m.weights_id}  "
            f"train/val/test {counts}  {score} {_score(m.metrics, 'candidate', m.role)}  "
            f"before {_score(m.metrics, 'incumbent', m.role)}  {m.verdict}"
        )
    for j in jobs:
        say(f"job {j.id}  {j.state}  asked by {j.trigger}  {j.requested_at:%Y-%m-%d %H:%M:%S}  {j.message or j.progress or ''}")


@models_app.command("promote")
def models_promote(
    model_id: Annotated[int, typer.Argument(help="The model's number in `labeler models list`.")],
    label_studio_url: LabelStudioUrl = None,
    project: ProjectId = None,
    database_url: DatabaseUrl = DEFAULT_DATABASE,
):
    """Make one of the project's segmenters its pre-label source, or one of its click models the one
    that answers its clicks (the backend switches at its next request)."""
    from labeler.training import promote

    role = promote(Workspace(label_studio_url, None, project, database_url), model_id)
    done = "answers the clicks of" if role == "clicks" else "pre-labels"
    console.print(f"{'click model' if role == 'clicks' else 'segmenter'} #{model_id} now {done} project {project}")


@models_app.command("rollback")
def models_rollback(
    clicks: Annotated[bool, typer.Option("--clicks", help="Roll back the click model instead of the pre-label source.")] = False,
    label_studio_url: LabelStudioUrl = None,
    project: ProjectId = None,
    database_url: DatabaseUrl = DEFAULT_DATABASE,
):
    """Go back to the pre-label source before the current one (a segmenter, or Grad-CAM); with
    --clicks, to the click model before the current one."""
    from labeler.training import rollback

    now = rollback(Workspace(label_studio_url, None, project, database_url), "clicks" if clicks else "prelabel")
    if clicks:
        console.print(f"rolled back: clicks now answered by {_answers_clicks(now)}", markup=False)
    else:
        console.print(f"rolled back: pre-labels now come from {'segmenter #' + str(now) if now else 'Grad-CAM'}")


@app.command()
def sync(
    full: Annotated[bool, typer.Option("--full", help="Export and compare the whole project, not only what changed since the last sync.")] = False,
    label_studio_url: LabelStudioUrl = None,
    api_key: ApiKey = None,
    project: ProjectId = None,
    database_url: DatabaseUrl = DEFAULT_DATABASE,
):
    """Pull the annotations changed since the last sync into the database (the first sync, or --full: all; idempotent)."""
    from rich.progress import Progress

    from labeler.syncing import sync_project

    ws = Workspace(label_studio_url, api_key, project, database_url)
    with Progress(transient=True, console=errors) as progress:
        bar = progress.add_task("syncing", total=None)
        report = sync_project(ws, full, lambda done, total: progress.update(bar, completed=done, total=total))
    read = f"full sync: {report.tasks} task(s)" if report.full else f"fetched {report.tasks} changed task(s)"
    listed = f"; counts differed: listed {report.listed} task id(s)" if report.listed else ""
    console.print(
        f"{read}, {report.annotations} annotation(s): {report.added} new revision(s), "
        f"{report.deleted_annotations} deleted annotation(s), {report.deleted_tasks} deleted task(s){listed}"
    )


@app.command("export")
def export_command(
    out: Annotated[Path, typer.Argument(help="Folder to write the export into (must be empty, or --overwrite).")],
    format: Annotated[str, typer.Option("--format", help="png (images/ + masks/), coco (annotations.json + images/) or npz (data.npz).")] = "png",
    size: Annotated[int, typer.Option(help="0 = original size; N = stretch images and masks to N x N.")] = 0,
    annotators: Annotated[str, typer.Option(help="latest (most recently updated annotation) or majority (pixel-wise vote, ties on).")] = "latest",
    seed: Annotated[int, typer.Option(help="Seed of the patient-level split.")] = 0,
    split: Annotated[str, typer.Option(help="train,val,test fractions (patient-level).")] = "0.7,0.15,0.15",
    predictions: Annotated[bool, typer.Option("--predictions", help="Also export the latest prediction's masks.")] = False,
    document_root: DocumentRoot = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a previous export in OUT.")] = False,
    label_studio_url: LabelStudioUrl = None,
    api_key: ApiKey = None,
    project: ProjectId = None,
    database_url: DatabaseUrl = DEFAULT_DATABASE,
):
    """Export the project's final human annotations (from our database) as a segmentation data set."""
    from rich.progress import Progress

    from labeler import exporting

    settings = exporting.ExportSettings(
        format=format, size=size, annotators=annotators, seed=seed, split=exporting.parse_split(split),
        predictions=predictions,
    )
    ws = Workspace(label_studio_url, api_key, project, database_url, writes=False)
    with Progress(transient=True, console=errors) as progress:
        bar = progress.add_task("exporting", total=None)
        hooks = exporting.ExportHooks(
            start=lambda total: progress.update(bar, total=total),
            advance=lambda: progress.advance(bar),
            skip=lambda task_id, message: errors.print(f"error: task {task_id}: {message}", markup=False, highlight=False),
        )
        report = exporting.export_project(ws, out, settings, overwrite, document_root, hooks)
    counts = ", ".join(f"{name} {n}" for name, n in report.splits.items())
    console.print(f"wrote {len(report.exported)} task(s) to {out} ({counts}); labels: {', '.join(report.labels) or 'none'}")
    if report.unasked:
        errors.print(f"warning: {report.unasked}", markup=False, highlight=False)
    if report.backfilled:
        console.print(f"stored the patient keys of {report.backfilled} older task(s), read from Label Studio")
    if report.own_patient:
        where = "in their Label Studio data" if report.connected else "in our database (Label Studio not set to fill older tasks)"
        console.print(f"{report.own_patient} task(s) have no patient_id / patient {where}: each is its own patient")
    if report.skipped:
        console.print(f"skipped {len(report.skipped)} task(s) whose image could not be read")
        raise typer.Exit(1)


@app.command()
def stats(
    project: ProjectId = None,
    label_studio_url: LabelStudioUrl = None,
    database_url: DatabaseUrl = DEFAULT_DATABASE,
    out: Annotated[Optional[Path], typer.Option(help="Folder for the CSV files and report.html (default: out/stats/project-N).")] = None,
    model_version: Annotated[Optional[str], typer.Option(help="Compare with this model version's pre-labels only (default: any).")] = None,
    since: Annotated[Optional[str], typer.Option(help="Only annotations last updated at or after this ISO date / time (UTC unless given).")] = None,
    until: Annotated[Optional[str], typer.Option(help="Only annotations last updated before this ISO time; a date alone includes that whole day.")] = None,
):
    """Pre-label vs final annotation and annotator agreement: Dice, IoU, HD95, kappas; CSV + HTML report."""
    from labeler.stats import parse_window, run
    from labeler.stats.tables import terminal_tables

    window = parse_window(since, until)
    ws = Workspace(label_studio_url, project_id=project)
    project_id = ws.require_project()
    out = out or Path("out") / "stats" / f"project-{project_id}"
    result, tables = run(database_url, project_id, out, model_version, ws.label_studio, window)
    for table in terminal_tables(result, tables):
        console.print(table)
    console.print(f"wrote {out / 'report.html'} and the CSV files beside it")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for everything the demo makes (reused by a rerun).")] = Path("out/demo"),
    port: Annotated[int, typer.Option(help="Label Studio's port on 127.0.0.1 (0 = any free one).")] = 8080,
    wait: Annotated[bool, typer.Option(help="Keep running until Ctrl-C (--no-wait: set up, print, stop).")] = True,
):
    """Label Studio with a demo project pre-labelled by the backend, on 127.0.0.1; Ctrl-C stops it."""
    import signal as signals

    from labeler.demo import start_demo

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    # kill / timeout (SIGTERM), a closed terminal (SIGHUP) and Ctrl-C, even when started with `&`
    # (which ignores SIGINT), all stop what the demo started, Label Studio and the backend.
    for sig in (signals.SIGINT, signals.SIGTERM, signals.SIGHUP):
        signals.signal(sig, interrupt)
    started = time.monotonic()
    running = start_demo(out, port or None, log=lambda line: console.print(f"[dim]{line}[/dim]"))
    studio = running.studio
    console.print(
        f"ready in {time.monotonic() - started:.0f} s\n"
        f"  Label Studio  {studio.url}/projects/{running.project_id}/data\n"
        f"  login         {studio.username} / {studio.password}\n"
        f"  API token     {studio.token}\n"
        f"  ML backend    {running.backend_url}  (metrics: {running.backend_url}/metrics)\n"
        "Open a task: the brush masks and polygons are the backend's Grad-CAM pre-labels. Correct one,\n"
        f"submit, and find the revision in {out / 'labeler.db'} (`labeler stats --project {running.project_id} "
        f"--database-url sqlite:///{out / 'labeler.db'}`). Ctrl-C stops everything.",
        soft_wrap=True,
    )
    try:
        if wait:
            signals.pause()
    except KeyboardInterrupt:
        pass
    finally:
        running.stop()


def main():
    app()
