"""Label Studio brush RLE: the thi.ng rle-pack bit stream over RGBA pixels.

Stream layout (MSB first): 32-bit value count, 5-bit word size - 1, four 4-bit
run-length sizes - 1, then records of a 1-bit run flag, a 2-bit size index,
the length - 1 in that many bits, and one word (run) or length words (literal);
zero padding to whole bytes. Label Studio stores every pixel as 4 equal values.
"""
from __future__ import annotations

import functools

import numpy as np

_WORD_SIZE = 8
_RLE_SIZES = (3, 4, 8, 16)
_HEADER_BITS = 32 + 5 + 4 * 4
_MAX_RUN = 2**16
_ON = 255
_CHANNELS = 4


def mask_to_rle(mask: np.ndarray) -> list[int]:
    """Encode a mask as Label Studio brush RLE.

    Parameters
    ----------
    mask : np.ndarray
        (H, W) bool or uint8; nonzero pixels are on and written as 255.

    Returns
    -------
    list[int]
        Bytes 0..255, identical to ``label_studio_sdk.converter.brush.mask2rle``
        of the same mask as uint8 0/255.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.size == 0:
        raise ValueError(f"mask must be a non-empty 2-D array, got shape {mask.shape}")
    if mask.dtype not in (np.bool_, np.uint8):
        raise ValueError(f"mask must be bool or uint8, got dtype {mask.dtype}")
    on = mask.ravel() != 0
    ends = np.append(np.flatnonzero(on[1:] != on[:-1]), on.size - 1)
    lengths = np.diff(ends, prepend=-1) * _CHANNELS
    values = np.where(on[ends], _ON, 0)
    return _encode(lengths, values, on.size * _CHANNELS)


def rle_to_mask(rle: list[int], height: int, width: int) -> np.ndarray:
    """Decode Label Studio brush RLE to its alpha channel.

    Parameters
    ----------
    rle : list[int]
        Bytes 0..255 as stored in a brush result's ``value["rle"]``.
    height, width : int
        Original image size in pixels.

    Returns
    -------
    np.ndarray
        (H, W) uint8, equal to ``decode_rle(rle).reshape(H, W, 4)[:, :, 3]``.
    """
    for name, size in (("height", height), ("width", width)):
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"{name} must be a positive int, got {size!r}")
    data = np.asarray(rle)
    if data.ndim != 1 or (data.size and not np.issubdtype(data.dtype, np.integer)):
        raise ValueError(f"rle must be a flat list of ints, got array of shape {data.shape} dtype {data.dtype}")
    if data.size and (data.min() < 0 or data.max() > 255):
        raise ValueError(f"rle values must be bytes 0..255, got range [{data.min()}, {data.max()}]")
    values = _decode(data.astype(np.uint8), height * width * _CHANNELS)
    return values.reshape(height, width, _CHANNELS)[:, :, _CHANNELS - 1].copy()


def _bits(value: int, width: int) -> np.ndarray:
    return ((value >> np.arange(width - 1, -1, -1)) & 1).astype(np.uint8)


def _encode(lengths: np.ndarray, values: np.ndarray, num: int) -> list[int]:
    # Like the SDK: runs over 2**16 become full 2**16 chunks plus the remainder.
    chunks = -(-lengths // _MAX_RUN)
    n = np.full(chunks.sum(), _MAX_RUN, dtype=np.int64)
    n[np.cumsum(chunks) - 1] = lengths - _MAX_RUN * (chunks - 1)
    values = np.repeat(values, chunks).astype(np.int64)

    sizes = np.array(_RLE_SIZES)
    idx = np.searchsorted(2**sizes, n)
    size = sizes[idx]
    width = 3 + size + _WORD_SIZE
    code = ((n > 1) << (width - 1)) | (idx << (width - 3)) | ((n - 1) << _WORD_SIZE) | values
    aligned = (code << (32 - width)).astype(">u4")
    bits = np.unpackbits(aligned.view(np.uint8).reshape(-1, 4), axis=1)
    body = bits[np.arange(32) < width[:, None]]

    header = [_bits(num, 32), _bits(_WORD_SIZE - 1, 5)] + [_bits(s - 1, 4) for s in _RLE_SIZES]
    total = _HEADER_BITS + body.size
    # The SDK pads with 8 - total % 8 zeros: a full extra byte when already aligned.
    stream = np.concatenate(header + [body, np.zeros(8 - total % 8, dtype=np.uint8)])
    return np.packbits(stream).tolist()


def _decode(data: np.ndarray, expected: int) -> np.ndarray:
    nbits = data.size * 8
    if nbits < _HEADER_BITS:
        raise ValueError(f"rle is truncated: {data.size} bytes cannot hold the {_HEADER_BITS}-bit header")
    padded = np.concatenate([data, np.zeros(4, dtype=np.uint8)]).astype(np.int64)
    windows = (padded[:-3] << 24) | (padded[1:-2] << 16) | (padded[2:-1] << 8) | padded[3:]

    def read(pos, width):
        """Unsigned big-endian fields of `width` <= 32 - pos % 8 bits starting at bit `pos`."""
        word = (windows[pos >> 3] << (pos & 7)) & 0xFFFFFFFF
        return (word >> (32 - width)) & ((1 << width) - 1)

    num = int(read(np.int64(0), 32))
    if num != expected:
        raise ValueError(f"rle holds {num} values but height * width * 4 = {expected}")
    word_size = int(read(np.int64(32), 5)) + 1
    if word_size > 8:
        raise ValueError(f"rle word size must be <= 8 bits for a uint8 mask, got {word_size}")
    sizes = tuple(int(v) + 1 for v in read(np.arange(37, _HEADER_BITS, 4), 4))

    starts = _record_starts(windows.tolist(), nbits, _steps(sizes, word_size))
    flag = read(starts, 1).astype(bool)
    size = np.array(sizes)[read(starts + 1, 2)]
    length = read(starts + 3, size) + 1
    first = starts + 3 + size
    ends = first + np.where(flag, 1, length) * word_size

    # The walk also parses the zero padding; keep the records that add up to num.
    done = np.cumsum(length)
    k = int(np.searchsorted(done, num))
    if k == done.size or ends[k] > nbits:
        covered = int(done[k - 1]) if 0 < k <= done.size else 0
        raise ValueError(f"rle is truncated: its records stop after {covered} of {num} values")
    if done[k] != num:
        raise ValueError(f"rle is corrupt: its records cover {done[k]} values but the header says {num}")
    flag, length, first = flag[: k + 1], length[: k + 1], first[: k + 1]

    words = np.where(flag, 1, length)
    record = np.repeat(np.arange(words.size), words)
    within = np.arange(words.sum()) - np.repeat(np.cumsum(words) - words, words)
    word_values = read(first[record] + within * word_size, word_size)
    return np.repeat(word_values, np.where(flag, length, 1)[record]).astype(np.uint8)


_PREFIX_BITS = 19  # flag + size index + the longest possible length field


@functools.lru_cache(maxsize=4)
def _steps(sizes: tuple[int, ...], word_size: int) -> list[int]:
    """Record length in bits for every possible 19-bit record prefix."""
    prefix = np.arange(1 << _PREFIX_BITS)
    size = np.array(sizes)[(prefix >> (_PREFIX_BITS - 3)) & 3]
    length = ((prefix >> (_PREFIX_BITS - 3 - size)) & ((1 << size) - 1)) + 1
    flag = prefix >> (_PREFIX_BITS - 1)
    return (3 + size + np.where(flag, 1, length) * word_size).tolist()


def _record_starts(windows: list[int], nbits: int, steps: list[int]) -> np.ndarray:
    """Bit offsets of the records, following each record's length from the header on."""
    starts, p, mask, shift = [], _HEADER_BITS, (1 << _PREFIX_BITS) - 1, 32 - _PREFIX_BITS
    append = starts.append
    while p < nbits:
        append(p)
        p += steps[(windows[p >> 3] >> (shift - (p & 7))) & mask]
    return np.array(starts, dtype=np.int64)
