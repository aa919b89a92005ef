"""Label Studio brush RLE against the SDK's reference encoder and decoder."""
from __future__ import annotations

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle, mask2rle

from explain.labelstudio.rle import mask_to_rle, rle_to_mask


def _sdk(mask: np.ndarray) -> list[int]:
    return mask2rle((mask != 0).astype(np.uint8) * 255)


def _sdk_decode(rle: list[int], height: int, width: int) -> np.ndarray:
    return decode_rle(rle).reshape(height, width, 4)[:, :, 3]


def _blobs(height: int, width: int) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    disk = (yy - height * 0.4) ** 2 + (xx - width * 0.3) ** 2 < (min(height, width) * 0.25) ** 2
    ellipse = ((yy - height * 0.7) / (height * 0.15)) ** 2 + ((xx - width * 0.7) / (width * 0.2)) ** 2 < 1
    return disk | ellipse


RNG = np.random.default_rng(1234)
MASKS = {
    "empty": np.zeros((64, 48), dtype=bool),
    "full": np.ones((64, 48), dtype=bool),
    "single-pixel": np.eye(1, dtype=bool),
    "speckle-37x91": RNG.random((37, 91)) < 0.5,
    "sparse-300x200": RNG.random((300, 200)) < 0.02,
    "blobs-300x200": _blobs(300, 200),
    "blobs-123x457": _blobs(123, 457),
    # 200 * 400 * 4 = 320000 equal values: one run split into 2**16 chunks
    "full-200x400": np.ones((200, 400), dtype=bool),
    "empty-200x400": np.zeros((200, 400), dtype=bool),
    "half-200x400": np.arange(200)[:, None].repeat(400, 1) < 120,
    "uint8-values": (RNG.random((40, 30)) < 0.3).astype(np.uint8) * RNG.integers(1, 256, (40, 30), dtype=np.uint8),
}


@pytest.mark.parametrize("name", MASKS)
def test_mask_to_rle_is_byte_identical_to_sdk(name):
    mask = MASKS[name]
    assert mask_to_rle(mask) == _sdk(mask)


def test_output_is_plain_python_bytes():
    rle = mask_to_rle(_blobs(50, 70))
    assert all(type(v) is int and 0 <= v <= 255 for v in rle)


def test_byte_aligned_stream_gets_a_full_padding_byte_like_sdk():
    # Header 53 bits + one 27-bit run record (64 < 4 * 100 <= 2**16 values) = 80 bits,
    # already a multiple of 8; the SDK still appends 8 zero bits.
    mask = np.zeros((10, 10), dtype=bool)
    sdk = _sdk(mask)
    assert (53 + 27) % 8 == 0 and len(sdk) == 80 // 8 + 1 and sdk[-1] == 0
    assert mask_to_rle(mask) == sdk
    assert mask_to_rle(~mask) == _sdk(~mask)


def test_runs_longer_than_2_16_values_are_split_like_sdk():
    mask = np.ones((200, 400), dtype=bool)
    rle = mask_to_rle(mask)
    # 320000 values -> 5 records of 27 bits; 53 + 135 = 188 bits -> 4 padding bits -> 24 bytes
    assert len(rle) == 24
    assert rle == _sdk(mask)
    assert np.array_equal(_sdk_decode(rle, 200, 400), np.full((200, 400), 255, np.uint8))


@pytest.mark.parametrize("name", MASKS)
def test_rle_to_mask_agrees_with_sdk_decoder(name):
    mask = MASKS[name]
    height, width = mask.shape
    sdk = _sdk(mask)
    decoded = rle_to_mask(sdk, height, width)
    assert decoded.dtype == np.uint8 and decoded.shape == (height, width)
    assert np.array_equal(decoded, _sdk_decode(sdk, height, width))
    assert np.array_equal(decoded, np.where(mask != 0, 255, 0))


@pytest.mark.parametrize("shape", [(37, 91), (300, 200), (1, 513), (257, 3)])
def test_round_trip_exact_on_non_square(shape):
    mask = (RNG.random(shape) < 0.4) | _blobs(*shape)
    assert np.array_equal(rle_to_mask(mask_to_rle(mask), *shape) == 255, mask)


def test_decoder_handles_literal_records():
    # Single values (literal records, flag 0) never come out of mask2rle, but the
    # format allows them; the SDK's generic encoder writes them.
    from label_studio_sdk.converter.brush import encode_rle

    values = np.array([0, 0, 0, 255] * 6 + [7] * 20 + [255, 0, 3, 0], dtype=np.uint8)
    rle = encode_rle(values)
    decoded = rle_to_mask(rle, 1, values.size // 4)
    assert np.array_equal(decoded[0], values[3::4])
    assert np.array_equal(decoded[0], decode_rle(rle)[3::4])


def test_wrong_size_is_rejected():
    rle = mask_to_rle(np.ones((20, 30), dtype=bool))
    with pytest.raises(ValueError, match="height \\* width"):
        rle_to_mask(rle, 30, 30)


@pytest.mark.parametrize("cut", [2, 3, 10])
def test_truncated_rle_is_rejected(cut):
    # Padding is at most 8 bits, so dropping 2 or more bytes always loses data.
    rle = mask_to_rle(RNG.random((30, 40)) < 0.5)
    with pytest.raises(ValueError, match="truncated"):
        rle_to_mask(rle[:-cut], 30, 40)


def test_header_only_rle_is_rejected():
    with pytest.raises(ValueError, match="truncated"):
        rle_to_mask(mask_to_rle(np.ones((4, 4), dtype=bool))[:4], 4, 4)


def test_corrupted_run_length_is_rejected():
    # 1 x 1 empty: 53-bit header, one record 1 00 011 00000000 (a run of 4 zeros), 5 padding bits.
    bits = np.unpackbits(np.array(mask_to_rle(np.zeros((1, 1), dtype=bool)), dtype=np.uint8))
    assert bits.size == 72 and bits[53:67].tolist() == [1, 0, 0, 0, 1, 1] + [0] * 8

    longer = bits.copy()
    longer[56] = 1  # a run of 8 values where the header says 4
    with pytest.raises(ValueError, match="corrupt"):
        rle_to_mask(np.packbits(longer).tolist(), 1, 1)

    overrun = bits.copy()
    overrun[54:56] = 1  # size index 3: a 16-bit length field, the record now ends past the data
    with pytest.raises(ValueError, match="truncated"):
        rle_to_mask(np.packbits(overrun).tolist(), 1, 1)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"rle": [300, 1, 2, 3, 4, 5, 6, 7]}, "rle"),
        ({"rle": [[1, 2], [3, 4]]}, "rle"),
        ({"height": 0}, "height"),
        ({"width": 2.5}, "width"),
    ],
)
def test_bad_decoder_arguments_name_the_parameter(kwargs, name):
    args = {"rle": mask_to_rle(np.ones((2, 2), dtype=bool)), "height": 2, "width": 2} | kwargs
    with pytest.raises(ValueError, match=name):
        rle_to_mask(**args)


@pytest.mark.parametrize("mask", [np.zeros((3, 3, 3), dtype=bool), np.zeros((0, 5), dtype=bool), np.zeros((4, 4))])
def test_bad_masks_are_rejected(mask):
    with pytest.raises(ValueError, match="mask"):
        mask_to_rle(mask)
