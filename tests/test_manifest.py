"""The manifest parser and the folder walk of ``labeler import`` (labeler/manifest.py), without
Label Studio: which rows become which items, and which rows / columns become one error line."""
from __future__ import annotations

from pathlib import Path

import pytest

from labeler.manifest import folder_items, read_manifest, sanitised


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_recognised_and_extra_columns_become_item_fields(tmp_path):
    manifest = write(
        tmp_path / "archive" / "list.csv",
        "Path,Patient,study,DATE,split,View Position,kVp\n"
        "a/1.png,P-001,S1,2021-03-04,Train,PA,120\n"
        "./b//2.dcm,,,,,,\n"
        f"{tmp_path / 'elsewhere.jpg'},P-002,,2021-03-04T10:11:12,test,AP,\n",
    )
    parsed = read_manifest(manifest)
    assert parsed.errors == ()
    assert parsed.count() == 3
    first, second, third = parsed.items()
    assert first.path == tmp_path / "archive" / "a" / "1.png" and first.source == "a/1.png"
    assert first.patient_id == "P-001" and first.row == "list.csv line 2" and first.error is None
    assert dict(first.data) == {"study": "S1", "date": "2021-03-04", "split": "train", "view_position": "PA", "kvp": "120"}
    assert second.source == "b/2.dcm" and second.patient_id is None and dict(second.data) == {}
    assert third.path == tmp_path / "elsewhere.jpg" and third.source == (tmp_path / "elsewhere.jpg").as_posix()
    assert third.patient_id == "P-002" and dict(third.data) == {"date": "2021-03-04T10:11:12", "split": "test", "view_position": "AP"}


def test_bad_rows_are_items_with_one_error_each_and_the_others_are_kept(tmp_path):
    manifest = write(
        tmp_path / "m.csv",
        "path,patient,split,date\n"
        "ok.png,P1,val,\n"
        "bad-split.png,P2,training,\n"
        "bad-date.png,P3,,04/03/2021\n"
        ",P4,train,\n"
        "\n"
        "extra.png,P5,train,2021-01-01,surplus\n"
        "ok2.png\n",
    )
    items = list(read_manifest(manifest).items())
    assert [i.error for i in items] == [
        None,
        "bad-split.png: split must be one of train, val, test",
        "bad-date.png: date must be ISO 8601 (YYYY-MM-DD, optionally with a time)",
        "no path",
        "extra.png: 5 fields where the header has 4",
        None,
    ]
    assert [i.row for i in items] == [f"m.csv line {n}" for n in (2, 3, 4, 5, 7, 8)]
    assert not any(f"P{n}" in (i.error or "") for i in items for n in range(1, 6))  # no patient id in a message
    assert items[-1].source == "ok2.png" and items[-1].patient_id is None


def test_reserved_patient_like_and_repeated_columns_are_dropped_with_one_line_each(tmp_path):
    manifest = write(
        tmp_path / "m.csv",
        "path,Image,content-hash,Source,Patient ID,note,Note!,%%\n"
        "a.png,x.png,abc,there,P-9,kept,dropped,gone\n",
    )
    parsed = read_manifest(manifest)
    assert list(parsed.errors) == [
        "m.csv: column 'Image' is reserved (the import writes 'image'); it is ignored",
        "m.csv: column 'content-hash' is reserved (the import writes 'content_hash'); it is ignored",
        "m.csv: column 'Source' is reserved (the import writes 'source'); it is ignored",
        "m.csv: column 'Patient ID' looks like patient data; it is ignored "
        "(put the patient id in the `patient` column, which is stored as a keyed hash)",
        "m.csv: column 'Note!' repeats the name 'note'; it is ignored",
        "m.csv: column 8 has no usable name; it is ignored",
    ]
    (item,) = parsed.items()
    assert dict(item.data) == {"note": "kept"} and item.error is None and item.patient_id is None


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "m.csv: empty manifest (a header row with a `path` column is needed)"),
        ("file,patient\na.png,P\n", "m.csv: no `path` column in the header"),
    ],
)
def test_a_manifest_without_a_path_column_is_refused(tmp_path, text, message):
    with pytest.raises(ValueError) as raised:
        read_manifest(write(tmp_path / "m.csv", text))
    assert str(raised.value) == message


def test_a_missing_or_non_utf8_manifest_is_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"^gone.csv: no such manifest file$"):
        read_manifest(tmp_path / "gone.csv")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("path,note\na.png,caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"^latin.csv: not a UTF-8 CSV file \(UnicodeDecodeError\)$"):
        read_manifest(latin)
    late = tmp_path / "late.csv"  # the bad byte far past the header: found while counting / reading rows
    late.write_bytes(b"path,note\n" + b"a.png,x\n" * 5000 + "b.png,caf\xe9\n".encode("latin-1"))
    parsed = read_manifest(late)
    for read in (parsed.count, lambda: list(parsed.items())):
        with pytest.raises(ValueError, match=r"^late.csv: not a UTF-8 CSV file \(UnicodeDecodeError\)$"):
            read()


def test_a_byte_order_mark_and_windows_line_ends_are_read(tmp_path):
    manifest = tmp_path / "excel.csv"
    manifest.write_bytes(b"\xef\xbb\xbfpath,patient\r\nsub\\x.png,P\r\n")
    (item,) = read_manifest(manifest).items()
    assert item.source == "sub/x.png" and item.patient_id == "P"


def test_sanitised_names():
    assert sanitised("  View Position ") == "view_position"
    assert sanitised("kVp (peak)") == "kvp_peak"
    assert sanitised("data.x") == "data_x"
    assert sanitised("!!") == ""


def test_folder_items_name_files_from_the_folder_given(tmp_path):
    root = tmp_path / "images"
    for name in ("b/2.PNG", "a/1.dcm", "a/notes.txt", "3.jpeg"):
        write(root / name, "x")
    single = write(tmp_path / "other" / "single.jpg", "x")
    count, items = folder_items([root, single])
    items = list(items)
    assert count == 4 == len(items)
    assert [i.source for i in items] == ["images/3.jpeg", "images/a/1.dcm", "images/b/2.PNG", "single.jpg"]
    assert items[1].path == root / "a" / "1.dcm" and items[1].row == "" and items[1].error is None
    with pytest.raises(FileNotFoundError, match=r"^gone: no such file or folder$"):
        folder_items([root, tmp_path / "gone"])
