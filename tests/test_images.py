"""explain.images: PNG / JPEG / DICOM reading, normalisation and clear, privacy-safe errors."""
from __future__ import annotations

import logging
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import ExplicitVRLittleEndian, MPEG2MPML, generate_uid

from explain import images
from explain.images import MAX_PIXELS, ImageError, image_size, load_image, to_uint8
from explain.prelabel import model_inputs
from models.spec import ModelSpec

PATIENT_NAME, PATIENT_ID = "Doe^Janet", "PID-73915"


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _blank_bilevel_png(width: int, height: int, *, with_pixels: bool = True) -> bytes:
    """A real 1-bit all-black PNG, tiny on disk however large (or only its header)."""
    header = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
    rows = b"\x00" * ((1 + (width + 7) // 8) * height) if with_pixels else b""
    idat = _png_chunk(b"IDAT", zlib.compress(rows, 9)) if with_pixels else b""
    return b"\x89PNG\r\n\x1a\n" + header + idat + _png_chunk(b"IEND", b"")


def _dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", bits: int = 12, **tags) -> Path:
    """A CR DICOM file (explicit VR little endian) with `pixels` as (rows, cols) or (frames, rows, cols)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "CR"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = PATIENT_NAME, PATIENT_ID, "19610412"
    if pixels is not None:
        ds.set_pixel_data(pixels, photometric, bits)
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def _ramp(height: int = 16, width: int = 256, top: int = 4095) -> np.ndarray:
    return np.tile(np.linspace(0, top, width).round().astype(np.uint16), (height, 1))


def _error(source, **kwargs) -> str:
    with pytest.raises(ImageError) as info:
        load_image(source, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# PNG / JPEG


def test_png_8bit_gray_is_rgb_float_at_original_size(tmp_path):
    gray = np.arange(37 * 53, dtype=np.uint32).reshape(37, 53) % 256
    path = tmp_path / "chest.png"
    cv2.imwrite(str(path), gray.astype(np.uint8))
    image = load_image(path)
    assert image.shape == (37, 53, 3) and image.dtype == np.float32
    np.testing.assert_allclose(image[..., 0], gray / 255, atol=1e-6)
    assert np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 0], image[..., 2])


def test_gray_images_are_one_channel_seen_three_times_and_resize_as_rgb_copies_would(tmp_path):
    """A gray PNG or DICOM is a read-only (H, W, 3) view of one channel (a third of the memory);
    the model's input made from it equals the one made from a real three-channel copy."""
    gray = (np.arange(301 * 407, dtype=np.uint32).reshape(301, 407) * 7919 % 256).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "chest.png"), gray)
    spec = ModelSpec(input_size=(64, 96), class_names=("covid", "normal"))
    dicom = _dicom(tmp_path / "chest.dcm", gray.astype(np.uint16), bits=8)
    for image in (load_image(tmp_path / "chest.png"), load_image(dicom)):
        assert images.is_gray_view(image) and image.shape == (301, 407, 3) and not image.flags.writeable
        assert image.base is not None and image.base.nbytes == 301 * 407 * 4  # one float channel behind the three
        copy = np.ascontiguousarray(image)
        assert not images.is_gray_view(copy)
        np.testing.assert_array_equal(model_inputs([image], spec), model_inputs([copy], spec))
    rgb = load_image(tmp_path / "chest.png")
    assert not images.is_gray_view(np.stack([rgb[..., 0], rgb[..., 0] * 0.5, rgb[..., 0]], axis=2))


def test_png_16bit_gray_is_scaled_by_65535(tmp_path):
    gray = np.array([[0, 32768, 65535], [1000, 20000, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    cv2.imwrite(str(path), gray)
    image = load_image(str(path))
    assert image.shape == (2, 3, 3)
    assert image[0, 0, 0] == 0.0 and image[0, 2, 0] == 1.0
    assert image[0, 1, 0] == pytest.approx(0.5, abs=1e-4)
    np.testing.assert_allclose(image[..., 1], gray / 65535, atol=1e-6)


def test_png_rgb_keeps_channel_order(tmp_path):
    rgb = np.zeros((5, 7, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 255, 128, 0
    path = tmp_path / "colour.png"
    Image.fromarray(rgb, "RGB").save(path)
    image = load_image(path)
    assert image.shape == (5, 7, 3)
    np.testing.assert_allclose(image[0, 0], [1.0, 128 / 255, 0.0], atol=1e-6)


def test_png_16bit_rgb_keeps_channel_order(tmp_path):
    bgr = np.zeros((4, 6, 3), np.uint16)
    bgr[..., 2] = 65535  # red, as OpenCV stores it
    path = tmp_path / "colour16.png"
    cv2.imwrite(str(path), bgr)
    np.testing.assert_allclose(load_image(path)[0, 0], [1.0, 0.0, 0.0])


def test_png_rgba_alpha_is_composited_on_black(tmp_path):
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[0, :, 3] = (255, 0, 51)
    rgba[1, :, 3] = 255
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(path)
    image = load_image(path)
    colour = np.array([200, 100, 50]) / 255
    np.testing.assert_allclose(image[0, 0], colour, atol=1e-6)
    np.testing.assert_allclose(image[0, 1], 0.0)
    np.testing.assert_allclose(image[0, 2], colour * 0.2, atol=1e-6)
    np.testing.assert_allclose(image[1], np.tile(colour, (3, 1)), atol=1e-6)


def test_png_gray_alpha_is_composited_on_black(tmp_path):
    la = np.zeros((3, 2, 2), np.uint8)
    la[..., 0] = 200
    la[..., 1] = ((255, 255), (0, 0), (51, 51))
    path = tmp_path / "gray_alpha.png"
    Image.fromarray(la, "LA").save(path)
    image = load_image(path)
    assert image.shape == (3, 2, 3)
    np.testing.assert_allclose(image[:, 0, 0], [200 / 255, 0.0, 200 / 255 * 0.2], atol=1e-6)
    assert np.array_equal(image[..., 0], image[..., 2])


def test_jpeg_gray_and_rgb(tmp_path):
    smooth = np.tile(np.linspace(30, 220, 90), (60, 1)).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "gray.jpg", quality=95)
    Image.fromarray(np.dstack([smooth, smooth // 2, 255 - smooth])).save(tmp_path / "rgb.jpeg", quality=95)
    gray = load_image(tmp_path / "gray.jpg")
    rgb = load_image(tmp_path / "rgb.jpeg")
    assert gray.shape == rgb.shape == (60, 90, 3)
    np.testing.assert_allclose(gray[..., 0], smooth / 255, atol=0.03)
    np.testing.assert_allclose(rgb[..., 2], (255 - smooth) / 255, atol=0.05)
    assert rgb[..., 0].mean() > rgb[..., 1].mean()


def test_magic_bytes_win_over_the_suffix(tmp_path):
    path = tmp_path / "really_a_jpeg.png"
    Image.fromarray(np.full((8, 9), 128, np.uint8)).save(path, format="JPEG")
    assert load_image(path).shape == (8, 9, 3)


def test_bytes_input_and_its_name(tmp_path):
    ok, png = cv2.imencode(".png", np.full((4, 5), 255, np.uint8))
    image = load_image(png.tobytes(), name="upload.png")
    assert image.shape == (4, 5, 3) and image.min() == 1.0
    assert image_size(bytearray(png.tobytes())) == (5, 4)
    assert _error(b"", name="upload.png") == "upload.png: empty file"
    assert _error(b"plain text") == "<bytes>: unsupported image format (expected PNG, JPEG or DICOM)"
    assert _error(png.tobytes()[:60], name="cut.png") == "cut.png: corrupt or truncated PNG data"


def test_name_overrides_path_name(tmp_path):
    (tmp_path / "tmp8f3k").write_bytes(b"")
    assert _error(tmp_path / "tmp8f3k", name="chest.png") == "chest.png: empty file"


def test_image_size_reads_the_header_only(tmp_path):
    path = tmp_path / "wide.png"
    path.write_bytes(_blank_bilevel_png(30000, 20000, with_pixels=False))
    assert image_size(path) == (30000, 20000)


def test_to_uint8():
    image = np.array([[0.0, 0.5, 1.0], [-0.2, 1.7, np.nan]], np.float32)
    assert to_uint8(image).tolist() == [[0, 128, 255], [0, 255, 0]]
    assert to_uint8(np.ones((2, 3, 3))).dtype == np.uint8 and to_uint8(np.ones((2, 3, 3))).shape == (2, 3, 3)


# errors


def test_empty_file(tmp_path):
    (tmp_path / "chest.png").write_bytes(b"")
    assert _error(tmp_path / "chest.png") == "chest.png: empty file"


def test_missing_file(tmp_path):
    assert _error(tmp_path / "nowhere" / "gone.png") == "gone.png: no such file"


def test_directory(tmp_path):
    (tmp_path / "folder.png").mkdir()
    assert "folder.png: is a directory" in _error(tmp_path / "folder.png")


def test_text_file_with_image_suffix_is_corrupt(tmp_path):
    for suffix, kind in ((".png", "PNG"), (".jpg", "JPEG"), (".dcm", "DICOM")):
        path = tmp_path / f"notes{suffix}"
        path.write_text("this is not an image\n" * 20)
        assert _error(path) == f"notes{suffix}: not a {kind} file or corrupt"


def test_truncated_png_and_jpeg(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    for suffix, kind in ((".png", "PNG"), (".jpg", "JPEG")):
        ok, encoded = cv2.imencode(suffix, noise)
        path = tmp_path / f"cut{suffix}"
        path.write_bytes(encoded.tobytes()[: len(encoded) // 2])
        assert _error(path) == f"cut{suffix}: corrupt or truncated {kind} data"


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF", "WEBP"])
def test_other_formats_are_unsupported(tmp_path, fmt):
    path = tmp_path / f"x.{fmt.lower()}"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(path, format=fmt)
    assert _error(path) == f"x.{fmt.lower()}: unsupported image format (expected PNG, JPEG or DICOM)"
    assert "unsupported image format" in _error(path.read_bytes(), name="x.png")


def test_unknown_suffix_is_unsupported(tmp_path):
    (tmp_path / "x.txt").write_text("hello")
    assert _error(tmp_path / "x.txt") == "x.txt: unsupported image format (expected PNG, JPEG or DICOM)"


def test_decompression_bomb_is_refused_before_decoding(tmp_path, monkeypatch):
    bomb = _blank_bilevel_png(12000, 12000)
    assert len(bomb) < 100_000
    (tmp_path / "big.png").write_bytes(bomb)

    def never(*args, **kwargs):
        raise AssertionError("decoded despite the pixel limit")

    monkeypatch.setattr(images.cv2, "imdecode", never)
    assert _error(tmp_path / "big.png") == f"big.png: 12000x12000 pixels exceeds the limit of {MAX_PIXELS}"
    header_only = _blank_bilevel_png(30000, 30000, with_pixels=False)
    assert _error(header_only, name="huge.png") == f"huge.png: 30000x30000 pixels exceeds the limit of {MAX_PIXELS}"


def test_default_limit_refuses_a_9000_square_bomb_and_keeps_a_4096_square_chest(monkeypatch):
    assert len(_blank_bilevel_png(9000, 9000)) < 100_000
    decoded = []
    real_imdecode = images.cv2.imdecode
    monkeypatch.setattr(images.cv2, "imdecode", lambda *a: decoded.append(1) or real_imdecode(*a))
    assert _error(_blank_bilevel_png(9000, 9000), name="bomb.png") == (
        f"bomb.png: 9000x9000 pixels exceeds the limit of {MAX_PIXELS}"
    )
    assert decoded == []
    assert load_image(_blank_bilevel_png(4096, 4096), name="chest.png").shape == (4096, 4096, 3)
    assert decoded == [1]


def _jpeg_dicom(path: Path, jpeg: bytes, rows: int, columns: int) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.50"  # JPEG Baseline
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.1", generate_uid()
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, columns, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([jpeg])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_frame_larger_than_rows_columns_is_refused_before_decoding(tmp_path, monkeypatch):
    import io

    buffer = io.BytesIO()
    Image.new("L", (8000, 6000)).save(buffer, "JPEG")
    small = io.BytesIO()
    Image.new("L", (40, 30), 128).save(small, "JPEG")
    assert load_image(_jpeg_dicom(tmp_path / "ok.dcm", small.getvalue(), 30, 40)).shape == (30, 40, 3)

    def never(*args, **kwargs):
        raise AssertionError("decoded a frame larger than Rows/Columns")

    monkeypatch.setattr(images.pixels, "pixel_array", never)
    path = _jpeg_dicom(tmp_path / "lie.dcm", buffer.getvalue(), 16, 16)
    assert _error(path) == "lie.dcm: DICOM pixel data is 8000x6000 pixels, but Rows/Columns say 16x16"


def test_deflated_dicom_that_inflates_past_the_limit_is_refused(tmp_path):
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    path = _dicom(tmp_path / "deflated.dcm", np.zeros((1000, 1000), np.uint16))  # 2 MB inflated
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    assert load_image(path).shape == (1000, 1000, 3)
    assert path.stat().st_size < 10_000
    assert _error(path, max_pixels=100) == "deflated.dcm: deflated DICOM data set inflates past 1049376 bytes"


def test_max_pixels_is_per_call(tmp_path):
    path = tmp_path / "small.png"
    cv2.imwrite(str(path), np.zeros((30, 40), np.uint8))
    assert _error(path, max_pixels=1199) == "small.png: 40x30 pixels exceeds the limit of 1199"
    assert load_image(path, max_pixels=1200).shape == (30, 40, 3)


def test_huge_png_within_an_explicit_limit_decodes(tmp_path):
    path = tmp_path / "wide.png"
    path.write_bytes(_blank_bilevel_png(3000, 7))
    image = load_image(path)
    assert image.shape == (7, 3000, 3) and image.max() == 0.0


# DICOM (synthetic)


def test_dicom_monochrome2_is_min_max_normalised(tmp_path):
    raw = _ramp(top=3000) + 100
    image = load_image(_dicom(tmp_path / "scan.dcm", raw))
    assert image.shape == (16, 256, 3) and image.dtype == np.float32
    np.testing.assert_allclose(image[..., 0], (raw - 100) / 3000, atol=1e-6)
    assert np.array_equal(image[..., 0], image[..., 2])


def test_dicom_monochrome1_is_inverted(tmp_path):
    raw = _ramp()
    mono2 = load_image(_dicom(tmp_path / "m2.dcm", raw))
    mono1 = load_image(_dicom(tmp_path / "m1.dcm", raw, "MONOCHROME1"))
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)
    assert mono1[0, 0, 0] == 1.0 and mono1[0, -1, 0] == 0.0  # lowest stored value is brightest


def test_dicom_rescale_and_window(tmp_path):
    raw = _ramp()
    tags = dict(RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=1000, WindowWidth=2001)
    image = load_image(_dicom(tmp_path / "windowed.dcm", raw, **tags))
    hu = raw * 2.0 - 1000
    expected = np.clip((hu + 0.5) / 2000, 0, 1)  # DICOM LINEAR window: centre - 0.5, width - 1
    np.testing.assert_allclose(image[..., 0], expected, atol=1e-5)
    assert (image[..., 0] == 0).sum() > 1 and (image[..., 0] == 1).sum() > 1

    inverted = load_image(_dicom(tmp_path / "windowed_m1.dcm", raw, "MONOCHROME1", **tags))
    np.testing.assert_allclose(inverted[..., 0], 1 - expected, atol=1e-5)


def test_dicom_multiple_windows_use_the_first(tmp_path):
    raw = _ramp()
    image = load_image(_dicom(tmp_path / "two.dcm", raw, WindowCenter=[1000, 3000], WindowWidth=[2001, 500]))
    windowed = np.clip((raw + 0.5) / 2000, 0, 1)  # the ramp starts inside this window: min-max stretches it
    expected = (windowed - windowed.min()) / (windowed.max() - windowed.min())
    np.testing.assert_allclose(image[..., 0], expected, atol=1e-5)


def test_dicom_flat_image_gives_zeros(tmp_path):
    image = load_image(_dicom(tmp_path / "flat.dcm", np.full((5, 6), 777, np.uint16)))
    assert image.shape == (5, 6, 3) and not np.isnan(image).any() and image.max() == 0.0


def test_dicom_multiframe_takes_the_first_frame(tmp_path):
    frames = np.stack([_ramp(8, 32), _ramp(8, 32)[:, ::-1]])
    image = load_image(_dicom(tmp_path / "frames.dcm", frames))
    assert image.shape == (8, 32, 3)
    assert image[0, 0, 0] == 0.0 and image[0, -1, 0] == 1.0


def test_dicom_rgb(tmp_path):
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0] = 255
    image = load_image(_dicom(tmp_path / "rgb.dcm", rgb, "RGB", bits=8))
    np.testing.assert_allclose(image[0, 0], [1.0, 0.0, 0.0])


def test_dicom_detected_by_magic_without_suffix_and_from_bytes(tmp_path):
    path = _dicom(tmp_path / "IM0001", _ramp())
    assert load_image(path).shape == (16, 256, 3)
    assert load_image(path.read_bytes(), name="upload").shape == (16, 256, 3)
    assert image_size(path) == (256, 16)


def test_dicom_without_preamble_is_read_by_suffix(tmp_path):
    data = _dicom(tmp_path / "full.dcm", _ramp()).read_bytes()
    bare = tmp_path / "bare.dcm"
    bare.write_bytes(data[132:])  # no preamble, no 'DICM': only the suffix says DICOM
    np.testing.assert_allclose(load_image(bare), load_image(tmp_path / "full.dcm"))


def test_dicom_without_pixel_data(tmp_path):
    assert _error(_dicom(tmp_path / "report.dcm", None)) == "report.dcm: no DICOM pixel data (missing or truncated)"


def test_dicom_pixel_limit_is_checked_from_the_header(tmp_path, monkeypatch):
    path = _dicom(tmp_path / "liar.dcm", _ramp(4, 4), Rows=60000, Columns=50000)

    def never(*args, **kwargs):
        raise AssertionError("decoded despite the pixel limit")

    monkeypatch.setattr(images.pixels, "pixel_array", never)
    assert _error(path) == f"liar.dcm: 50000x60000 pixels exceeds the limit of {MAX_PIXELS}"
    assert _error(_dicom(tmp_path / "ok.dcm", _ramp()), max_pixels=100) == "ok.dcm: 256x16 pixels exceeds the limit of 100"


def _assert_private(info: pytest.ExceptionInfo, caplog: pytest.LogCaptureFixture, *secrets: str) -> None:
    assert info.value.__cause__ is None and (info.value.__context__ is None or info.value.__suppress_context__)
    for secret in secrets:
        assert secret and secret not in str(info.value) and secret not in caplog.text


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")
@pytest.mark.parametrize("damage", ["short_pixel_data", "truncated_file", "garbled_header"])
def test_corrupt_dicom_error_leaks_no_patient_data(tmp_path, caplog, damage):
    caplog.set_level(logging.DEBUG)
    path = _dicom(tmp_path / "scan.dcm", _ramp())
    if damage == "short_pixel_data":
        ds = pydicom.dcmread(path)
        ds.PixelData = ds.PixelData[:100]
        ds.save_as(path)
    elif damage == "truncated_file":
        path.write_bytes(path.read_bytes()[:-3000])
    else:
        data = path.read_bytes()
        path.write_bytes(data[:132] + b"\xff" * 64 + data[196:])
    with pytest.raises(ImageError) as info:
        load_image(path)
    message = str(info.value)
    assert message.startswith("scan.dcm: ") and any(word in message for word in ("corrupt", "cannot decode", "truncated"))
    _assert_private(info, caplog, PATIENT_NAME, PATIENT_ID, "Doe", "19610412")


def test_invalid_window_is_reported_without_values(tmp_path):
    path = _dicom(tmp_path / "badwindow.dcm", _ramp(), WindowCenter=40, WindowWidth=0)
    assert _error(path) == "badwindow.dcm: invalid DICOM rescale, LUT or window values"


def test_dicom_without_a_decoder(tmp_path):
    path = _dicom(tmp_path / "video.dcm", _ramp())
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" * 4])
    ds.save_as(path)
    assert _error(path) == "video.dcm: no decoder installed for DICOM pixel data (MPEG2 Main Profile / Main Level)"


# DICOM (the team's research files)


@pytest.fixture(scope="module")
def real_dicoms(request) -> Path:
    return request.getfixturevalue("shared_data") / "cxr" / "dicom"


def test_real_jpeg_dicom_and_its_monochrome1_variant_are_inverses(real_dicoms):
    mono2 = load_image(real_dicoms / "siim_nih_cr_chest_pa_jpeg.dcm")
    mono1 = load_image(real_dicoms / "siim_nih_cr_chest_pa_jpeg_MONOCHROME1_variant.dcm")
    assert mono2.shape == mono1.shape == (1024, 1024, 3)
    assert mono2.min() == 0.0 and mono2.max() == 1.0
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)
    assert np.corrcoef(mono1[..., 0].ravel(), mono2[..., 0].ravel())[0, 1] < -0.999


def test_real_uncompressed_dicom(real_dicoms):
    path = real_dicoms / "nih_gcp_dx_chest_nofinding_uncompressed.dcm"
    image = load_image(path)
    assert image.shape == (1024, 1024, 3) and image.dtype == np.float32
    assert image.min() == 0.0 and image.max() == 1.0
    assert image_size(path) == (1024, 1024)


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")
def test_real_dicom_truncated_leaks_no_patient_data(real_dicoms, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    source = real_dicoms / "siim_nih_cr_chest_pa_jpeg.dcm"
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    secrets = [str(ds.get(key, "")).strip() for key in ("PatientName", "PatientID")]
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(source.read_bytes()[:-60000])
    with pytest.raises(ImageError) as info:
        load_image(cut)
    assert str(info.value).startswith("cut.dcm: ")
    _assert_private(info, caplog, *[s for s in secrets if s])


@pytest.mark.parametrize("keep", [0.3, 0.9])
def test_real_jpeg_dicom_with_a_cut_frame_is_refused(real_dicoms, tmp_path, keep):
    ds = pydicom.dcmread(real_dicoms / "siim_nih_cr_chest_pa_jpeg.dcm")
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[: int(len(frame) * keep) // 2 * 2]])
    ds.save_as(tmp_path / "cut.dcm")
    assert _error(tmp_path / "cut.dcm") == "cut.dcm: corrupt or truncated DICOM pixel data (JPEG Baseline (Process 1))"
