"""Decoding one image file (or tar-shard member) to uint8 pixels, with guards against bad files.

torchvision decodes PNG/JPEG/GIF/WEBP; PIL takes whatever else it can open. Headers are checked
before torchvision sees the bytes (a truncated PNG or an oversized JPEG goes to PIL, whose
decompression-bomb guard applies). A file that cannot be decoded (corrupt, truncated, empty, not an
image) raises :class:`BadImageError`, which the loaders turn into a skipped file.

Reduced-size JPEG decoding: given ``draft`` (the side the evaluation transform needs,
:func:`draft_side`), a JPEG at least twice that size on both sides is decoded by PIL with
``Image.draft`` (libjpeg's DCT scaling by 1/2, 1/4 or 1/8, the largest that keeps both sides at
least ``draft``), so a 256-pixel photo for a 32-pixel teacher is decoded at 32 pixels, not 256.
The pixels differ slightly from a full decode followed by the resize (DCT scaling is its own
low-pass filter; the difference and the speed-up are measured in docs/benchmarks.md, section
"Reduced-size JPEG decoding");
every other image (PNG, small JPEGs, other formats) decodes exactly as without ``draft``. The
decompression-bomb guards apply as before (a JPEG over PIL's limit never takes this path).
"""

from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torchvision.io import ImageReadMode, decode_image

from pucli.data.shards import read_member, split_member
from pucli.errors import DataError

__all__ = ["BadImageError", "decode_image_file", "decode_images", "draft_side"]


class BadImageError(Exception):
    """Internal: one file could not be decoded (caught per item)."""


def decode_image_file(path: Path, channels: int, *, draft: int | None = None) -> torch.Tensor:
    """Decode an image file to uint8 (channels, H, W), EXIF orientation applied.

    torchvision decodes PNG/JPEG/GIF/WEBP; PIL takes whatever else it can open.

    Args:
        path: an image file or a tar-shard member path.
        channels: 1 (grey) or 3 (RGB).
        draft: pixels; a JPEG at least twice this on both sides is decoded at a reduced size
            whose sides stay >= ``draft`` (the module docstring); None decodes at full size.

    Raises:
        BadImageError: empty, truncated, corrupt or not an image.
    """
    _check_channels(channels)
    data = _read_encoded(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        view = memoryview(data.numpy())
        image = _decode_reduced(data, channels, draft) if draft and view[:2] == _JPEG_SOI else None
        if image is None:
            image = _decode_with_torchvision(data, channels, view)
    return _finish_decode(path, data, image, channels)


def draft_side(size: tuple[int, int], crop_pct: float) -> int:
    """The side a decoded image may be reduced to before the evaluation transform resizes it to
    ``size`` (H, W) pixels: ``max(floor(s / crop_pct))``, the larger side of the transform's
    scale step (:class:`pucli.data.loading.Preprocess`), so no mode of it (centre crop, squash,
    border) upsamples what the reduced decode gives."""
    return max(math.floor(s / crop_pct) for s in size)


def _decode_reduced(data: torch.Tensor, channels: int, draft: int) -> torch.Tensor | None:
    """A JPEG of at least ``2 * draft`` pixels on both sides, decoded by PIL at the reduced size
    ``Image.draft`` picks (both sides >= ``draft``), EXIF orientation applied; None for anything
    else (not a JPEG, smaller, over PIL's pixel limit, unreadable), which then decodes as usual."""
    view = memoryview(data.numpy())
    if view[:2] != _JPEG_SOI:
        return None
    from PIL import Image, ImageOps
    from torchvision.transforms.v2.functional import pil_to_tensor

    size = _jpeg_size(view)
    limit = Image.MAX_IMAGE_PIXELS
    if size is None or min(size) < 2 * draft or (limit is not None and size[0] * size[1] > limit):
        return None
    mode = "L" if channels == 1 else "RGB"
    try:
        with Image.open(io.BytesIO(view)) as opened:
            if opened.format != "JPEG":
                return None
            opened.draft(mode, (draft, draft))
            opened.load()
            return pil_to_tensor(ImageOps.exif_transpose(opened).convert(mode))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None  # the usual path reports it


def _check_channels(channels: int) -> None:
    if channels not in (1, 3):
        raise ValueError(f"models with {channels} input channels are not supported (1 or 3)")


def _read_encoded(path: Path) -> torch.Tensor:
    """The file's bytes as a 1-D uint8 tensor over a writable buffer (no copy, no warning).

    A member path of a tar shard (``pool-000003.tar#img.png``, :mod:`pucli.data.shards`) reads that member.

    Raises:
        BadImageError: unreadable or empty.
    """
    member = split_member(path)
    if member is not None:
        return _read_member(*member)
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            buffer = bytearray(os.fstat(fd).st_size)
            read = os.readv(fd, [buffer]) if buffer else 0
            if read < len(buffer):  # shrank since fstat
                del buffer[read:]
        finally:
            os.close(fd)
    except OSError as exc:
        raise BadImageError(f"cannot read ({exc.strerror or exc.__class__.__name__})") from exc
    if not buffer:
        raise BadImageError("empty file")
    return torch.frombuffer(buffer, dtype=torch.uint8)


def _read_member(shard: Path, name: str) -> torch.Tensor:
    try:
        buffer = read_member(shard, name)
    except KeyError:
        raise BadImageError(f"no member {name} in {shard}") from None
    except (OSError, DataError) as exc:
        raise BadImageError(f"cannot read shard ({getattr(exc, 'strerror', None) or exc})") from exc
    if not buffer:
        raise BadImageError("empty file")
    return torch.frombuffer(buffer, dtype=torch.uint8)


def _decode_with_torchvision(data: torch.Tensor, channels: int, view: memoryview | None = None) -> torch.Tensor | None:
    """torchvision's decode of ``data``, or None when it cannot read it (PIL's turn); ``view``:
    ``data``'s bytes, when the caller has them already.

    Callers silence warnings around it: torchvision warns of its own deprecation on every call,
    and a batch is cheaper to wrap once than each image.
    """
    if not _safe_for_torchvision(data, view):
        return None
    try:
        return decode_image(data, mode=ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB,
                            apply_exif_orientation=True)
    except (RuntimeError, ValueError):
        return None


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOI = b"\xff\xd8"


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by colour type


def _safe_for_torchvision(data: torch.Tensor, view: memoryview | None = None) -> bool:
    """Whether torchvision may decode ``data``; False leaves the file to PIL, which checks it.

    torchvision has no decompression-bomb guard (a PNG or JPEG header of a few bytes can announce
    30,000 x 30,000 pixels, gigabytes once decoded), and its PNG decoder crashes the whole process
    (segmentation fault, torchvision 0.29) on a PNG whose image data ends early ("Not enough image
    data"). PIL refuses the first (:class:`PIL.Image.DecompressionBombError`) and reports the
    second as truncated, so one bad file is skipped, not fatal.
    """
    from PIL import Image

    if view is None:
        view = memoryview(data.numpy())
    limit = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else None  # PIL's error threshold
    if view[:8] == _PNG_SIGNATURE:
        return _png_is_whole(view, limit)
    if view[:2] == _JPEG_SOI:
        size = _jpeg_size(view)
        return size is None or limit is None or size[0] * size[1] <= limit
    return True


def _png_is_whole(view: memoryview, limit: int | None) -> bool:
    """A plain (non-interlaced) PNG within ``limit`` pixels whose IDAT stream inflates to at least
    the bytes its header promises. Costs one more inflate of the image data (against torchvision's
    decode: see docs/benchmarks.md, section "Reading the unlabeled pool", "The PNG completeness
    check")."""
    import struct
    import zlib

    if len(view) < 33 or view[12:16] != b"IHDR":
        return False
    width, height, depth, colour, _, _, interlace = struct.unpack_from(">IIBBBBB", view, 16)
    if (limit is not None and width * height > limit) or interlace or colour not in _PNG_CHANNELS:
        return False
    expected = height * (1 + (width * _PNG_CHANNELS[colour] * depth + 7) // 8)
    inflate = zlib.decompressobj()
    produced, position = 0, 8
    try:
        while position + 8 <= len(view) and produced < expected:
            length, kind = struct.unpack_from(">I4s", view, position)
            if kind == b"IDAT":
                # max_length: never inflate more than the image needs (a zlib bomb stops here).
                produced += len(inflate.decompress(view[position + 8:position + 8 + length], expected - produced))
            elif kind == b"IEND":
                break
            position += 12 + length
    except zlib.error:
        return False
    return produced >= expected


def _jpeg_size(view: memoryview) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header (SOFn), or None when not found before the scan."""
    position, end = 2, len(view) - 9
    while position < end:
        if view[position] != 0xFF:
            return None
        marker = view[position + 1]
        if marker == 0xFF or marker == 0x01 or 0xD0 <= marker <= 0xD7:  # fill byte, markers without length
            position += 1 if marker == 0xFF else 2
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height = view[position + 5] << 8 | view[position + 6]
            width = view[position + 7] << 8 | view[position + 8]
            return width, height
        if marker == 0xDA:
            return None
        position += 2 + (view[position + 2] << 8 | view[position + 3])
    return None


def _to_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 (c, H, W) with c in 1-4 (grey, grey+alpha, RGB, RGBA) -> (channels, H, W): alpha dropped,
    colour to grey (ITU-R 601-2 luma, as PIL's "L") or grey repeated. torchvision ignores the
    requested mode for some formats (GIF, WebP)."""
    from torchvision.transforms.v2.functional import rgb_to_grayscale

    if image.shape[0] in (2, 4):
        image = image[:-1]
    if image.shape[0] == channels:
        return image
    if channels == 1 and image.shape[0] == 3:
        return rgb_to_grayscale(image)
    if channels == 3 and image.shape[0] == 1:
        return image.expand(3, -1, -1).contiguous()
    return image


def _finish_decode(path: Path, data: torch.Tensor, image: torch.Tensor | None, channels: int) -> torch.Tensor:
    """PIL fallback when torchvision could not decode, 16-bit to 8-bit, channels, and the shape check."""
    if image is None:
        image = _decode_with_pil(path, data.numpy().tobytes(), channels)
    if image.dtype != torch.uint8:
        from torchvision.transforms.v2.functional import to_dtype

        image = to_dtype(image, torch.uint8, scale=True)
    if image.ndim == 3 and image.shape[0] != channels:
        image = _to_channels(image, channels)
    if image.ndim != 3 or image.shape[0] != channels or image.shape[1] < 1 or image.shape[2] < 1:
        raise BadImageError(f"decoded to an unexpected shape {tuple(image.shape)}")
    return image


def _decode_with_pil(path: Path, data: bytes, channels: int) -> torch.Tensor:
    import io

    from PIL import Image, ImageOps, UnidentifiedImageError
    from torchvision.transforms.v2.functional import pil_to_tensor

    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.load()
            image = ImageOps.exif_transpose(opened)
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                image = image.point(lambda v: v / 256).convert("L")  # 16-bit: keep the high byte
            image = image.convert("L" if channels == 1 else "RGB")
            return pil_to_tensor(image)
    except UnidentifiedImageError as exc:
        raise BadImageError("not an image") from exc
    except Image.DecompressionBombError as exc:
        raise BadImageError("too large (PIL decompression-bomb guard)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImageError(f"corrupt or truncated ({str(exc).splitlines()[0][:80] if str(exc) else 'decode error'})") from exc


def decode_images(paths: Sequence[Path], channels: int, *,
                  draft: int | None = None) -> list[tuple[torch.Tensor | None, str | None]]:
    """Decode several files at once: per path ``(image, None)`` with a uint8 (channels, H, W)
    image, or ``(None, reason)`` for a file that cannot be decoded; ``draft`` as
    :func:`decode_image_file`.

    The same pixels as :func:`decode_image_file` per file, with one warnings context for the
    torchvision pass over all of them (PIL's fallback runs outside it, as in
    :func:`decode_image_file`): what a loader worker calls once per batch.

    Raises:
        ValueError: ``channels`` is not 1 or 3.
    """
    _check_channels(channels)
    encoded: list[tuple[torch.Tensor | None, torch.Tensor | None, str | None]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in paths:
            try:
                data = _read_encoded(path)
            except BadImageError as exc:
                encoded.append((None, None, str(exc)))
                continue
            view = memoryview(data.numpy())  # one view for both checks: per image it is not free
            image = _decode_reduced(data, channels, draft) if draft and view[:2] == _JPEG_SOI else None
            encoded.append((data, image if image is not None else _decode_with_torchvision(data, channels, view), None))
    decoded: list[tuple[torch.Tensor | None, str | None]] = []
    for path, (data, image, reason) in zip(paths, encoded):
        if data is None:
            decoded.append((None, reason))
            continue
        try:
            decoded.append((_finish_decode(path, data, image, channels), None))
        except BadImageError as exc:
            decoded.append((None, str(exc)))
    return decoded
