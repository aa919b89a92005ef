"""Which compressed DICOMs the default install decodes, and the error that names the optional
`dicom-jpeg` extra (libjpeg, GPL-3) where it does not. A missing decoder package is simulated by
taking its plugin out of pydicom's decoder for that transfer syntax, as on an install without it."""
from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import pixels
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1, JPEGLSLossless, UID, generate_uid,
)

from explain.images import ImageError, load_image

HINT = "; install the dicom-jpeg extra: pip install 'cxr-labeler[dicom-jpeg]'"


def without(monkeypatch, syntax: UID, *plugins: str):
    """pydicom's decoder for `syntax` as on an install that lacks these plugins' packages."""
    decoder = pixels.get_decoder(syntax)
    kept = {label: f for label, f in decoder._available.items() if label not in plugins}
    monkeypatch.setattr(decoder, "_available", kept)


def encapsulated(path: Path, syntax: UID, frame: bytes, rows: int, columns: int, bits: int) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.1", generate_uid()
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, columns, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16 if bits > 8 else 8, bits, bits - 1, 0
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def start_of_frame(marker: int, rows: int, columns: int, bits: int) -> bytes:
    """SOI, a one-component start-of-frame segment, EOI: enough header for the size checks."""
    segment = struct.pack(">BHHBBBB", bits, rows, columns, 1, 1, 0x11, 0)
    return b"\xff\xd8" + bytes([0xFF, marker]) + struct.pack(">H", len(segment) + 2) + segment + b"\xff\xd9"


@pytest.mark.parametrize(
    "syntax, marker", [(JPEGLosslessSV1, 0xC3), (JPEGLossless, 0xC3), (JPEGLSLossless, 0xF7)], ids=lambda v: str(v)
)
def test_jpeg_lossless_without_libjpeg_names_the_extra(tmp_path, monkeypatch, syntax, marker):
    without(monkeypatch, syntax, "pylibjpeg", "gdcm")
    path = encapsulated(tmp_path / "lossless.dcm", syntax, start_of_frame(marker, 16, 16, 12), 16, 16, 12)
    with pytest.raises(ImageError) as info:
        load_image(path)
    assert str(info.value) == f"lossless.dcm: no decoder installed for DICOM pixel data ({syntax.name}){HINT}"


def test_the_hint_goes_only_where_a_decoder_is_missing(tmp_path, monkeypatch):
    """With a JPEG Lossless decoder installed (here one that fails on every frame) the file is
    called corrupt, not sent to the extra; a syntax the extra does not decode (MPEG2) gets no
    hint either: tests/test_images.py, test_dicom_without_a_decoder."""

    def failing(*args, **kwargs):
        raise ValueError("bad scan")

    monkeypatch.setattr(pixels.get_decoder(JPEGLosslessSV1), "_available", {"stand-in": failing})
    path = encapsulated(tmp_path / "stub.dcm", JPEGLosslessSV1, start_of_frame(0xC3, 16, 16, 12), 16, 16, 12)
    with pytest.raises(ImageError) as info:
        load_image(path)
    assert str(info.value) == f"stub.dcm: corrupt or truncated DICOM pixel data ({JPEGLosslessSV1.name})"


def test_default_install_decodes_jpeg_baseline_through_pillow(tmp_path, monkeypatch):
    without(monkeypatch, JPEGBaseline8Bit, "pylibjpeg", "gdcm")
    assert pixels.get_decoder(JPEGBaseline8Bit).available_plugins == ("pillow",)
    gradient = np.tile(np.linspace(0, 255, 40).astype(np.uint8), (30, 1))
    jpeg = io.BytesIO()
    Image.fromarray(gradient).save(jpeg, "JPEG", quality=95)
    image = load_image(encapsulated(tmp_path / "baseline.dcm", JPEGBaseline8Bit, jpeg.getvalue(), 30, 40, 8))
    assert image.shape == (30, 40, 3)
    decoded = np.asarray(Image.open(io.BytesIO(jpeg.getvalue())), np.float32)
    expected = (decoded - decoded.min()) / (decoded.max() - decoded.min())
    np.testing.assert_allclose(image[..., 0], expected, atol=1e-6)


def test_12_bit_jpeg_extended_without_libjpeg_names_the_extra(tmp_path, monkeypatch):
    """Pillow stands for JPEG Extended but decodes 8-bit samples only: 12-bit needs the extra."""
    without(monkeypatch, JPEGExtended12Bit, "pylibjpeg", "gdcm")
    assert pixels.get_decoder(JPEGExtended12Bit).available_plugins == ("pillow",)
    path = encapsulated(tmp_path / "twelve.dcm", JPEGExtended12Bit, start_of_frame(0xC1, 16, 16, 12), 16, 16, 12)
    with pytest.raises(ImageError) as info:
        load_image(path)
    assert str(info.value) == f"twelve.dcm: no decoder installed for DICOM pixel data ({JPEGExtended12Bit.name}){HINT}"
