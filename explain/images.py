"""Reading PNG, JPEG and DICOM images as float RGB arrays.

Errors name the file and the problem, never a DICOM element value: patient data stays out of
messages, exception chains and logs.
"""
from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pydicom
from PIL import JpegImagePlugin, PngImagePlugin
from pydicom import pixels
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import (
    UID, DeflatedExplicitVRLittleEndian, JPEG2000TransferSyntaxes, JPEGExtended12Bit, JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
)

# 6000 x 6000: above any chest detector (43 x 43 cm at 100 um is 4300 x 4300), yet a tiny PNG of
# zeros claiming 9000 x 9000 would cost seconds and over a gigabyte per image to decode.
MAX_PIXELS = 36_000_000

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_OTHER_MAGIC = (b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*", b"RIFF")  # GIF, BMP, TIFF, WebP
_SUFFIXES = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".dcm": "DICOM", ".dicom": "DICOM"}
_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_MARKER_ENDED = {*JPEGTransferSyntaxes, *JPEGLSTransferSyntaxes, *JPEG2000TransferSyntaxes}
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}  # 0xF7: JPEG-LS
_J2K_SIZ = b"\xff\x4f\xff\x51"  # start of codestream, then the image and tile size segment
# Pillow decodes JPEG Baseline / Extended (8-bit) and JPEG 2000; JPEG Lossless, JPEG-LS and 12-bit
# JPEG Extended need libjpeg (GPL-3), which the default install leaves out: pyproject's optional
# `dicom-jpeg` extra.
_EXTRA_DECODES = {*JPEGTransferSyntaxes, *JPEGLSTransferSyntaxes}
_EXTRA_HINT = "; install the dicom-jpeg extra: pip install 'cxr-labeler[dicom-jpeg]'"
_EPS = 1e-8

Source = str | os.PathLike | bytes | bytearray
_Header = Dataset | PngImagePlugin.PngImageFile | JpegImagePlugin.JpegImageFile


class ImageError(ValueError):
    """An image that cannot be read; the message is one line, "<file name>: <problem>"."""


def load_image(source: Source, *, name: str | None = None, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read a PNG, JPEG or DICOM image as (H, W, 3) float32 RGB in [0, 1], at its original size.

    `source` is a path or the file's bytes; `name` is the file name errors show (default: the
    path's name). 8-bit and 16-bit PNG/JPEG are scaled by their full range, gray is replicated to
    three channels (a read-only view, see `gray_as_rgb`) and alpha is composited on black. DICOM
    goes through its modality and VOI LUTs, MONOCHROME1 is inverted (bone bright) and the result
    is min-max normalised; the first frame of a multi-frame file is taken. Images over
    `max_pixels` are refused from their header, before any decoding.
    """
    label, kind, data = _read(source, name)
    header = _header(label, kind, data, max_pixels)
    width, height = _size(header)
    if width * height > max_pixels:
        raise ImageError(f"{label}: {width}x{height} pixels exceeds the limit of {max_pixels}")
    if kind == "DICOM":
        _check_frame_size(label, header)
        return _decode_dicom(label, header)
    return _decode_raster(label, kind, data)


def image_size(source: Source, *, name: str | None = None) -> tuple[int, int]:
    """(width, height) of an image, read from its header only."""
    label, kind, data = _read(source, name)
    return _size(_header(label, kind, data, MAX_PIXELS))


def gray_as_rgb(gray: np.ndarray) -> np.ndarray:
    """A (H, W) gray image seen as (H, W, 3) RGB without copying: a read-only view whose three
    channels are the same memory (a third of the bytes; `is_gray_view` tells it apart)."""
    return np.broadcast_to(gray[..., None], (*gray.shape, 3))


def is_gray_view(image: np.ndarray) -> bool:
    """Whether ``image`` is (H, W, 3) with one channel's memory behind all three (`gray_as_rgb`):
    work on ``image[..., 0]`` and broadcast back gives the same result for a third of the cost."""
    return image.ndim == 3 and image.shape[2] == 3 and image.strides[2] == 0


def to_uint8(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 3) float in [0, 1] -> uint8 of the same shape (clipped, rounded, NaN -> 0)."""
    image = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0)
    return np.rint(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)


def _read(source: Source, name: str | None) -> tuple[str, str, bytes]:
    """(display name, "PNG" | "JPEG" | "DICOM", file bytes)."""
    if isinstance(source, (bytes, bytearray)):
        label, data = name or "<bytes>", bytes(source)
    else:
        path = Path(source)
        label = name or path.name
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ImageError(f"{label}: no such file") from None
        except IsADirectoryError:
            raise ImageError(f"{label}: is a directory, not a file") from None
        except PermissionError:
            raise ImageError(f"{label}: permission denied") from None
        except OSError as e:
            raise ImageError(f"{label}: cannot read file ({e.strerror or type(e).__name__})") from None
    if not data:
        raise ImageError(f"{label}: empty file")
    return label, _kind(label, data), data


def _kind(label: str, data: bytes) -> str:
    """Format from the magic bytes, else from the name's suffix; other known formats are refused."""
    if data.startswith(_PNG_MAGIC):
        return "PNG"
    if data.startswith(_JPEG_MAGIC):
        return "JPEG"
    if data[128:132] == b"DICM":
        return "DICOM"
    kind = _SUFFIXES.get(Path(label).suffix.lower())
    if kind is None or data.startswith(_OTHER_MAGIC):
        raise ImageError(f"{label}: unsupported image format (expected PNG, JPEG or DICOM)")
    return kind


def _header(label: str, kind: str, data: bytes, max_pixels: int) -> _Header:
    """The parsed header: a pydicom Dataset (pixels not decoded) or a lazy PIL image."""
    if kind == "DICOM":
        return _dicom_header(label, data, max_pixels)
    plugin = PngImagePlugin.PngImageFile if kind == "PNG" else JpegImagePlugin.JpegImageFile
    try:
        return plugin(io.BytesIO(data))
    except Exception:
        raise ImageError(f"{label}: not a {kind} file or corrupt") from None


def _dicom_header(label: str, data: bytes, max_pixels: int) -> Dataset:
    has_magic = data[128:132] == b"DICM"
    if has_magic and not _inflates_within(data, 8 * max_pixels + (1 << 20)):
        raise ImageError(f"{label}: deflated DICOM data set inflates past {8 * max_pixels + (1 << 20)} bytes")
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=not has_magic)
        has_pixels = any(tag in ds for tag in _PIXEL_TAGS)
        rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    except Exception:
        raise ImageError(f"{label}: not a DICOM file or corrupt") from None
    if not has_pixels:
        problem = "no DICOM pixel data (missing or truncated)" if has_magic else "not a DICOM file or corrupt"
        raise ImageError(f"{label}: {problem}")
    if rows <= 0 or columns <= 0:
        raise ImageError(f"{label}: DICOM file has no valid Rows/Columns")
    return ds


def _size(header: _Header) -> tuple[int, int]:
    if isinstance(header, Dataset):
        return int(header.Columns), int(header.Rows)
    return header.size


def _decode_raster(label: str, kind: str, data: bytes) -> np.ndarray:
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        image = None
    if image is None:
        raise ImageError(f"{label}: corrupt or truncated {kind} data")
    if image.dtype not in (np.uint8, np.uint16):
        raise ImageError(f"{label}: unsupported {kind} sample type {image.dtype}")
    scale = np.float32(np.iinfo(image.dtype).max)
    if image.ndim == 3 and image.shape[2] == 4:
        x = image.astype(np.float32) / scale
        return np.ascontiguousarray((x[..., :3] * x[..., 3:])[..., ::-1])
    if image.ndim == 2 or image.shape[2] == 1:
        return gray_as_rgb(np.divide(image.reshape(image.shape[:2]), scale, dtype=np.float32))
    # channels first on the integers (a quarter of the bytes), then one pass to float
    return np.divide(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), scale, dtype=np.float32)


def _decode_dicom(label: str, ds: Dataset) -> np.ndarray:
    syntax = getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID")
    codec = f" ({syntax.name})" if syntax else ""
    if syntax and not _has_decoder(syntax, ds):
        hint = _EXTRA_HINT if syntax in _EXTRA_DECODES else ""
        raise ImageError(f"{label}: no decoder installed for DICOM pixel data{codec}{hint}")
    try:
        if not _codestream_complete(ds, syntax):
            raise EOFError
        arr = pixels.pixel_array(ds, index=0)
    except Exception:
        raise ImageError(f"{label}: corrupt or truncated DICOM pixel data{codec}") from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if arr.ndim == 2 and photometric in ("MONOCHROME1", "MONOCHROME2"):
        try:
            arr = pixels.apply_voi_lut(pixels.apply_modality_lut(arr, ds), ds)
        except Exception:
            raise ImageError(f"{label}: invalid DICOM rescale, LUT or window values") from None
        if photometric == "MONOCHROME1":
            arr = -np.asarray(arr, dtype=np.float32)
        arr = arr[..., None]
    elif not (arr.ndim == 3 and arr.shape[2] == 3):
        raise ImageError(f"{label}: unsupported DICOM photometric interpretation {photometric}")
    x = np.asarray(arr, dtype=np.float32)
    lo, hi = float(x.min()), float(x.max())
    x = (x - lo) / max(hi - lo, _EPS)
    return gray_as_rgb(x[..., 0]) if x.shape[2] == 1 else np.ascontiguousarray(x)


def _inflates_within(data: bytes, limit: int) -> bool:
    """False for a deflated DICOM data set that inflates past ``limit`` bytes (pydicom inflates it
    whole while reading the header, so a small file can claim gigabytes)."""
    try:
        fp = io.BytesIO(data)
        read_preamble(fp, False)
        if _read_file_meta_info(fp).get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
            return True
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        inflater.decompress(data[fp.tell():], limit)
        return not inflater.unconsumed_tail
    except Exception:
        return True  # not deflated as far as we can tell: dcmread judges the rest


def _check_frame_size(label: str, ds: Dataset):
    """A compressed first frame must be Rows x Columns: the codec sizes its output by the codestream's
    own header, so a frame claiming more would be decoded in full before pydicom notices."""
    syntax = getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID")
    if syntax not in _MARKER_ENDED:
        return
    try:
        size = _codestream_size(_first_frame(ds))
    except Exception:
        return  # unreadable frames are reported by the decoder
    if size is not None and size != _size(ds):
        raise ImageError(
            f"{label}: DICOM pixel data is {size[0]}x{size[1]} pixels, but Rows/Columns say {_size(ds)[0]}x{_size(ds)[1]}"
        )


def _codestream_size(frame: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG / JPEG-LS start-of-frame or a JPEG 2000 SIZ segment, else None."""
    at = frame.find(_J2K_SIZ, 0, 1 << 16)
    if at >= 0:
        xsiz, ysiz, x0, y0 = struct.unpack(">IIII", frame[at + 8 : at + 24])
        return xsiz - x0, ysiz - y0
    i = 2 if frame.startswith(b"\xff\xd8") else len(frame)
    while i + 9 <= len(frame) and frame[i] == 0xFF:
        marker = frame[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", frame[i + 5 : i + 9])
            return width, height
        elif marker == 0xDA:  # scan data before any frame header
            return None
        else:
            i += 2 + int.from_bytes(frame[i + 2 : i + 4], "big")
    return None


def _first_frame(ds: Dataset) -> bytes:
    return next(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1) or 1)))


def _has_decoder(syntax: UID, ds: Dataset) -> bool:
    try:
        decoder = pixels.get_decoder(syntax)
    except NotImplementedError:
        return False
    bits = ds.get("BitsStored")
    if syntax == JPEGExtended12Bit and isinstance(bits, int) and bits > 8:
        # pydicom's Pillow plugin decodes 8-bit JPEG Extended only
        return bool(set(decoder.available_plugins) - {"pillow"})
    return decoder.is_available


def _codestream_complete(ds: Dataset, syntax: UID | None) -> bool:
    """False when a JPEG-family first frame lacks its end marker: libjpeg decodes a cut one silently."""
    if syntax not in _MARKER_ENDED:
        return True
    frame = _first_frame(ds)
    return frame.rstrip(b"\x00").endswith(b"\xff\xd9")
