"""The ``labeler`` command line."""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="Grad-CAM pre-labelling assistant for Label Studio.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals may hold image data
)
# soft_wrap: long lines (paths) are not broken at the terminal width, so that every error stays one line.
console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)


def one_line_errors(command):
    """Expected failures (bad input, missing files) end with one 'error:' line and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (ValueError, FileNotFoundError, OSError) as exc:
            errors.print(f"error: {exc}", markup=False, highlight=False)
            raise typer.Exit(2) from None

    return wrapper


def parse_threshold(text: str):
    """``fraction:0.2``, ``percentile:90`` or ``otsu`` -> Threshold."""
    from explain.regions import Threshold

    method, _, value = text.partition(":")
    try:
        return Threshold(method, float(value)) if value else Threshold(method)
    except ValueError as exc:
        raise ValueError(f"--threshold {text!r}: {exc}") from None


@app.command()
@one_line_errors
def explain(
    images: Annotated[list[Path], typer.Argument(help="PNG, JPEG or DICOM files.")],
    model: Annotated[Path, typer.Option(help="Classifier (.keras, .h5 or SavedModel folder) with its spec beside it.")],
    out: Annotated[Path, typer.Option(help="Folder for the pictures, masks and Label Studio JSON.")],
    method: Annotated[str, typer.Option(help="gradcam, guided, gradcam++, hirescam or layercam.")] = "gradcam",
    layer: Annotated[Optional[str], typer.Option(help="Target layer (default: the spec's, else the last 4-D layer).")] = None,
    target: Annotated[str, typer.Option(help="'predicted', a class name, or 'above:P' for every class with probability >= P.")] = "predicted",
    threshold: Annotated[str, typer.Option(help="fraction:F (of the max), percentile:P or otsu.")] = "fraction:0.2",
    min_area: Annotated[float, typer.Option(help="Smallest region, as a fraction of the image area.")] = 0.001,
    max_vertices: Annotated[int, typer.Option(help="Polygon vertex budget.")] = 64,
    colormap: Annotated[str, typer.Option(help="jet, turbo, inferno, magma, viridis, hot or bone.")] = "jet",
    batch_size: Annotated[int, typer.Option(help="Images per model call.")] = 16,
):
    """Heatmaps, masks and Label Studio pre-labels for images: the reference article's picture."""
    from explain.gradcam import Target
    from explain.overlay import COLORMAPS
    from explain.prelabel import PrelabelSettings
    from explain.regions import RegionSettings
    from labeler.explaining import explain_files

    settings = PrelabelSettings(
        method=method,
        layer=layer,
        target=Target.parse(target),
        regions=RegionSettings(parse_threshold(threshold), min_area=min_area, max_vertices=max_vertices),
    )
    if colormap not in COLORMAPS:
        raise ValueError(f"--colormap must be one of {sorted(COLORMAPS)}, got {colormap!r}")
    outcomes = explain_files(images, model, out, settings, colormap=colormap, batch_size=batch_size)
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
@one_line_errors
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
    seed: Annotated[int, typer.Option()] = 0,
):
    """Train a classifier on DATA_DIR/<class>/<images> and save it with its spec."""
    import keras

    from labeler.datasets import load_resized, scan_class_folders
    from models.classifiers import ARCHITECTURES
    from models.loading import save_classifier, weights_version
    from models.training import train_classifier as fit

    if arch not in ARCHITECTURES:
        raise ValueError(f"--arch must be one of {sorted(ARCHITECTURES)}, got {arch!r}")
    if out.suffix not in (".keras", ".h5"):
        raise ValueError(f"--out must end in .keras or .h5, got {out.name!r}")
    paths, labels, class_names = scan_class_folders(data_dir)
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
    )
    save_classifier(model, spec, out)
    val = "n/a" if report.val_accuracy is None else f"{report.val_accuracy:.3f}"
    console.print(
        f"saved {out} (version {weights_version(model)}), epoch {report.best_epoch} of {report.epochs}: "
        f"train accuracy {report.train_accuracy:.3f}, validation accuracy {val}"
    )


@app.command("demo-data")
@one_line_errors
def demo_data(
    out: Annotated[Path, typer.Argument(help="Folder to write OUT/images/<class>/*.png and OUT/masks/*.png into.")],
    per_class: Annotated[int, typer.Option(min=1)] = 60,
    size: Annotated[int, typer.Option(min=32)] = 128,
    seed: Annotated[int, typer.Option()] = 0,
):
    """Write synthetic radiograph-like images (classes clear / opacity, with lesion masks)."""
    from labeler.synthetic import write_dataset

    write_dataset(out, per_class, size, seed)
    console.print(f"wrote {2 * per_class} images to {out}")


def main():
    app()
