"""What ``labeler import`` imports: the files of a manifest (CSV) or of folder trees, as `Item`s.

A manifest is a CSV file (UTF-8, a header row) with a ``path`` column (relative to the manifest's
folder, or absolute) and optional columns ``patient`` (the patient id: only its keyed hash reaches
Label Studio, see `labeler.patients`), ``study``, ``date`` (ISO 8601), ``split`` (train, val or
test) and any others, kept as task data under a sanitised name (lower case, ``[a-z0-9_]``).
Recognised column names are matched case-insensitively. A column whose sanitised name is one the
import writes itself (`RESERVED`), or that names raw patient data, is dropped with one error line.

A row that cannot be imported (no path, a bad split or date, a path too long) comes out as an
`Item` with ``error`` set, so that the import reports it and goes on with the others. Rows are
read one at a time: a manifest of a million rows is never held in memory.
"""
from __future__ import annotations

import csv
import os
import posixpath
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

from labeler.class_folders import IMAGE_SUFFIXES

COLUMNS = ("path", "patient", "study", "date", "split")
SPLITS = ("train", "val", "test")
#: Task data keys the import writes itself; an extra column may not take them.
RESERVED = {"image", "source", "content_hash", *COLUMNS}
#: Extra column names that would carry raw patient data into Label Studio.
PATIENT_DATA = {"patient_id", "patientid", "patient_name", "patientname", "name", "mrn"}
SOURCE_MAX_CHARS = 1024  # db.repository keeps source names up to this length


@dataclass(frozen=True)
class Item:
    """One file to import.

    row: the manifest row that names it ("manifest.csv line 5"), "" for a file found in a folder;
    path: where to read it (None for a row in error); source: the ``source`` task value;
    patient_id: the raw patient id from the manifest (never stored), None when not given;
    data: further task data (study, date, split, extra columns); error: why it cannot be imported
    (one line, no patient data: the file name and the problem).
    """

    row: str
    path: Path | None
    source: str
    patient_id: str | None = None
    data: Mapping[str, str] = field(default_factory=dict)
    error: str | None = None

    @property
    def name(self) -> str:
        """The file's name, as error lines show it."""
        return posixpath.basename(self.source) if self.source else ""


def sanitised(name: str) -> str:
    """A column name as a task data key: lower case, runs of other characters than ``[a-z0-9_]`` as
    one ``_``, no leading or trailing ``_``; "" when nothing is left."""
    return re.sub(r"[^a-z0-9_]+", "_", name.strip().lower()).strip("_")


@dataclass(frozen=True)
class Manifest:
    """A parsed header: ``file`` (the CSV), ``width`` (fields in the header), the column index of
    each recognised column, the extra columns' (index, data key), one error line per dropped column."""

    file: Path
    width: int
    columns: Mapping[str, int]
    extras: tuple[tuple[int, str], ...]
    errors: tuple[str, ...]

    def count(self) -> int:
        """The number of data rows (one pass over the file, nothing kept)."""
        return sum(1 for _ in self._rows())

    def items(self) -> Iterator[Item]:
        """One `Item` per non-empty data row, in file order."""
        for row, line in self._rows():
            yield self._item(row, line)

    def _rows(self) -> Iterator[tuple[list[str], int]]:
        """The non-empty data rows with their line numbers; ValueError (one line) where the file
        stops being UTF-8 CSV."""
        try:
            with _open(self.file) as handle:
                reader = csv.reader(handle)
                next(reader, None)
                for row in reader:
                    if any(cell.strip() for cell in row):
                        yield row, reader.line_num
        except (UnicodeDecodeError, csv.Error) as exc:
            raise ValueError(f"{self.file.name}: not a UTF-8 CSV file ({type(exc).__name__})") from None

    def _item(self, row: list[str], line: int) -> Item:
        where = f"{self.file.name} line {line}"

        def cell(name: str) -> str:
            index = self.columns.get(name)
            return row[index].strip() if index is not None and index < len(row) else ""

        given = cell("path")
        if not given:
            return Item(where, None, "", error="no path")
        source = _source(given)
        data = {name: cell(name) for name in ("study", "date", "split") if cell(name)}
        data.update({key: row[i].strip() for i, key in self.extras if i < len(row) and row[i].strip()})
        problem = None
        if len(row) > self.width:
            problem = f"{len(row)} fields where the header has {self.width}"
        elif len(source) > SOURCE_MAX_CHARS:
            problem = f"path longer than {SOURCE_MAX_CHARS} characters"
        elif "split" in data and data["split"].lower() not in SPLITS:
            problem = f"split must be one of {', '.join(SPLITS)}"
        elif "date" in data and not _is_iso_date(data["date"]):
            problem = "date must be ISO 8601 (YYYY-MM-DD, optionally with a time)"
        if problem:
            return Item(where, None, source[:SOURCE_MAX_CHARS], error=f"{posixpath.basename(source)}: {problem}")
        if "split" in data:
            data["split"] = data["split"].lower()
        path = Path(given).expanduser()
        path = path if path.is_absolute() else self.file.parent / path
        return Item(where, path, source, cell("patient") or None, data)


def read_manifest(file: Path) -> Manifest:
    """The manifest's header, checked. Raises ValueError (one line) for a file that is missing,
    empty, not UTF-8 CSV, or without a ``path`` column."""
    if not file.is_file():
        raise FileNotFoundError(f"{file.name}: no such manifest file")
    try:
        with _open(file) as handle:
            header = next(csv.reader(handle), None)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{file.name}: not a UTF-8 CSV file ({type(exc).__name__})") from None
    if not header:
        raise ValueError(f"{file.name}: empty manifest (a header row with a `path` column is needed)")
    columns, extras, errors, taken = {}, [], [], set()
    for index, raw in enumerate(header):
        name = raw.strip().lower()
        if name in COLUMNS and name not in columns:
            columns[name] = index
            continue
        key = sanitised(raw)
        if not key:
            errors.append(f"{file.name}: column {index + 1} has no usable name; it is ignored")
        elif key in RESERVED:
            errors.append(f"{file.name}: column {raw.strip()!r} is reserved (the import writes {key!r}); it is ignored")
        elif key in PATIENT_DATA:
            errors.append(
                f"{file.name}: column {raw.strip()!r} looks like patient data; it is ignored "
                "(put the patient id in the `patient` column, which is stored as a keyed hash)"
            )
        elif key in taken:
            errors.append(f"{file.name}: column {raw.strip()!r} repeats the name {key!r}; it is ignored")
        else:
            extras.append((index, key))
        taken.add(key)
    if "path" not in columns:
        raise ValueError(f"{file.name}: no `path` column in the header")
    return Manifest(file, len(header), columns, tuple(extras), tuple(errors))


def folder_items(paths: list[Path]) -> tuple[int, Iterator[Item]]:
    """The image files (PNG, JPEG, DICOM by suffix) among ``paths``, folders searched recursively in
    a stable (sorted) order, with their count. A file's ``source`` is its path from the folder given,
    that folder's own name first (``images/a/b.png`` for ``labeler import data/images``), so that two
    folders with the same file names stay apart; a file given by itself is its name. A missing path
    raises FileNotFoundError before anything is imported."""
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"{path.name}: no such file or folder")
    count = sum(1 if not path.is_dir() else sum(1 for _ in _walk(path)) for path in paths)

    def items() -> Iterator[Item]:
        for path in paths:
            if not path.is_dir():
                yield Item("", path, path.name)
                continue
            top = path.resolve().name
            for file in _walk(path):
                source = posixpath.join(top, file.relative_to(path).as_posix()) if top else file.relative_to(path).as_posix()
                yield Item("", file, source)

    return count, items()


def _walk(folder: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                yield Path(root) / name


def _source(given: str) -> str:
    """The ``source`` value of a manifest path: POSIX separators, ``.`` parts and repeated ``/``
    removed, so that equal paths written differently are one source."""
    return posixpath.normpath(given.replace("\\", "/"))


def _is_iso_date(text: str) -> bool:
    for parse in (date.fromisoformat, datetime.fromisoformat):
        try:
            parse(text)
            return True
        except ValueError:
            pass
    return False


def _open(file: Path):
    return open(file, newline="", encoding="utf-8-sig")
