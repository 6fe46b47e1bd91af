"""Image sources: labeled class folders (positive set, test set) and the unlabeled pool.

- A **labeled folder** has one subfolder per class. Classes map to the model's outputs by the
  model's ``label_names`` when it has them, else by sorted folder names, or by a ``--classes``
  file (one class name per line, in output order).
- The **unlabeled pool** is a folder scanned recursively for image files, a text file with one
  image path per line, or ``-`` for such a list on stdin; or tar shards, whose image members are
  read in place (:mod:`pucli.shards`).

Images are decoded by torchvision (PIL for formats it cannot read) in DataLoader worker processes
and brought to the model's input size as uint8; :class:`Preprocess` turns a batch into normalised
float32 on the model's device. A file that cannot be decoded (corrupt, truncated, empty, not an
image) is skipped and reported in the batch's ``failed`` list: a long run never dies on one file.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import torch
from torch.utils.data import DataLoader, Dataset

from pucli.checkpoints import ModelConfig
from pucli.errors import ClassMappingError, DataError, NoImagesError, UsageError
from pucli.shards import expand_braces, is_shard_name, read_member, shard_members, split_member

__all__ = [
    "IMAGE_EXTENSIONS",
    "LabeledFolder",
    "UnlabeledPool",
    "Preprocess",
    "ImageDataset",
    "Batch",
    "SkippedFile",
    "iterate_batches",
    "read_path_list",
]

# torchvision's ImageFolder list, plus GIF which PIL decodes.
from torchvision.datasets.folder import IMG_EXTENSIONS as _TV_EXTENSIONS  # noqa: E402
from torchvision.io import ImageReadMode, decode_image  # noqa: E402

IMAGE_EXTENSIONS: tuple[str, ...] = tuple(sorted({*_TV_EXTENSIONS, ".gif"}))


def is_image_file(name: str) -> bool:
    """True when ``name`` ends in a known image extension (any case)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


@dataclass(frozen=True)
class SkippedFile:
    """An input image that could not be used, and why (one line)."""

    path: str
    reason: str


@dataclass
class LabeledFolder:
    """Images in class subfolders, with labels in the model's output order.

    ``paths[i]`` has label ``labels[i]`` (an output index of the model); ``class_names[k]`` is the
    name of output k; ``counts[k]`` the number of images found for it.
    """

    root: Path
    class_names: list[str]
    paths: list[Path]
    labels: list[int]
    folder_to_class: dict[str, int] = field(default_factory=dict)

    @property
    def counts(self) -> list[int]:
        counts = [0] * len(self.class_names)
        for label in self.labels:
            counts[label] += 1
        return counts

    def __len__(self) -> int:
        return len(self.paths)

    @classmethod
    def from_folder(
        cls,
        root: str | os.PathLike[str],
        *,
        num_classes: int,
        label_names: Sequence[str] | None = None,
        classes_file: str | os.PathLike[str] | None = None,
        option: str = "--positive",
    ) -> LabeledFolder:
        """Scan ``root/<class>/**/<image>``.

        Args:
            num_classes: the model's number of outputs.
            label_names: the model's class names in output order, if known.
            classes_file: text file of class names in output order; wins over ``label_names``.
            option: the CLI option that named ``root``, quoted in errors.

        Raises:
            UsageError: ``root`` missing or not a folder; bad ``classes_file``.
            ClassMappingError: folders that do not map onto the model's classes.
            NoImagesError: no image file in any class folder.
        """
        from torchvision.datasets.folder import make_dataset

        root = Path(root)
        if not root.exists():
            raise UsageError(f"{option} {root} does not exist: give a folder with one subfolder per class")
        if not root.is_dir():
            raise UsageError(f"{option} {root} is not a folder: give a folder with one subfolder per class")
        folders = sorted(entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith("."))
        if not folders:
            raise NoImagesError(f"{option} {root} has no class subfolders: put each class's images in {root}/<class>/")
        if classes_file is not None:
            names = read_class_names(classes_file, num_classes)
            source = f"--classes {classes_file}"
        elif label_names is not None:
            names, source = list(label_names), "the teacher's label_names"
        else:
            if len(folders) != num_classes:
                raise ClassMappingError(
                    f"{option} {root} has {len(folders)} class folders but the teacher has {num_classes} outputs: "
                    "pass --classes FILE listing the teacher's classes in output order"
                )
            names, source = folders, "sorted folder names"
        index = {name: k for k, name in enumerate(names)}
        unknown = [name for name in folders if name not in index]
        if unknown:
            shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
            raise ClassMappingError(
                f"{option} {root}: folder(s) {', '.join(unknown[:5])} are not classes of the teacher "
                f"(by {source}: {shown}); rename them or pass --classes FILE"
            )
        folder_to_class = {name: index[name] for name in folders}
        items = make_dataset(root, folder_to_class, extensions=IMAGE_EXTENSIONS, allow_empty=True)
        if not items:
            raise NoImagesError(f"{option} {root} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
        return cls(
            root=root,
            class_names=names,
            paths=[Path(p) for p, _ in items],
            labels=[label for _, label in items],
            folder_to_class=folder_to_class,
        )


def read_class_names(path: str | os.PathLike[str], num_classes: int) -> list[str]:
    """Class names, one per line, in the model's output order (blank lines and ``#`` ignored).

    Raises:
        UsageError: unreadable file, duplicate names, or a count other than ``num_classes``.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--classes {path} cannot be read ({exc.__class__.__name__}): give a UTF-8 text file") from exc
    names = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if len(names) != num_classes:
        raise UsageError(f"--classes {path} lists {len(names)} classes but the teacher has {num_classes} outputs")
    if len(set(names)) != len(names):
        raise UsageError(f"--classes {path} lists a class twice: each line must name a different class")
    return names


@dataclass
class UnlabeledPool:
    """The unlabeled pool: image paths in a fixed, reproducible order."""

    source: str
    paths: list[Path]

    def __len__(self) -> int:
        return len(self.paths)

    @classmethod
    def from_source(cls, source: str, *, stdin: TextIO | None = None, option: str = "--unlabeled") -> UnlabeledPool:
        """Read a pool from a folder (recursive, sorted), a path-list file, ``-`` (stdin), or tar
        shards: a shard, a brace pattern of shards (``pool-{000000..000099}.tar``), or shards named
        in the path list; a shard contributes its image members (:mod:`pucli.shards`).

        Raises:
            UsageError: the source (or a shard it names) does not exist.
            DataError: a shard is not an uncompressed tar file.
            NoImagesError: the source names no image.
        """
        if is_shard_name(source) and not Path(source).is_dir():
            paths = shard_members(expand_braces(source), option=option)
            where = f"shards {source}"
        elif source == "-":
            try:
                paths = read_path_list((stdin or sys.stdin), base=Path.cwd(), name=f"{option} - (stdin)")
            except UnicodeDecodeError as exc:
                raise UsageError(f"{option} -: stdin is not a UTF-8 list of image paths; pipe one path per line") from exc
            where = "the path list on stdin"
        else:
            root = Path(source)
            if not root.exists():
                raise UsageError(f"{option} {root} does not exist: give a folder of images, a file listing image paths, or -")
            if root.is_dir():
                paths = scan_images(root)
                where = f"folder {root}"
            else:
                try:
                    with root.open(encoding="utf-8") as handle:
                        paths = read_path_list(handle, base=root.parent, name=f"{option} {root}")
                except UnicodeDecodeError as exc:
                    raise UsageError(
                        f"{option} {root} is neither a folder nor a text list of image paths: give one of those"
                    ) from exc
                where = f"path list {root}"
        if any(is_shard_name(path) for path in paths):
            paths = _expand_listed_shards(paths, option)
        if not paths:
            raise NoImagesError(f"{option}: {where} names no image file; check the path")
        return cls(source=source, paths=paths)


def _expand_listed_shards(paths: list[Path], option: str) -> list[Path]:
    """A path list's entries with every shard (or shard pattern) replaced by its image members."""
    expanded: list[Path] = []
    for path in paths:
        if is_shard_name(path):
            expanded.extend(shard_members(expand_braces(str(path)), option=option))
        else:
            expanded.append(path)
    return expanded


def scan_images(root: Path) -> list[Path]:
    """Every image file under ``root`` (recursive, following symlinks), sorted by path."""
    found: list[Path] = []
    for folder, subfolders, files in os.walk(root, followlinks=True):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        found.extend(Path(folder, name) for name in sorted(files) if is_image_file(name) and not name.startswith("."))
    return found


def read_path_list(lines: Iterable[str], base: Path, *, name: str = "the path list") -> list[Path]:
    """Paths from a list, one per line; blank lines and ``#`` comments skipped; relative paths are
    taken from ``base`` (the list file's folder, or the working directory for stdin); ``~`` and
    ``~user`` are expanded. ``name`` (e.g. ``--unlabeled list.txt``) is quoted in errors.

    Raises:
        DataError: a line holds a NUL byte (not a text list), or a ``~user`` that does not exist.
    """
    paths = []
    for number, line in enumerate(lines, start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if "\x00" in entry:
            raise DataError(f"{name} line {number} holds a NUL byte: give a text file with one image path per line")
        try:
            path = Path(entry).expanduser()
        except RuntimeError:  # ~user of no such user
            raise DataError(f"{name} line {number}: cannot expand {entry.split('/')[0][:40]!r}; write the path out") from None
        paths.append(path if path.is_absolute() else base / path)
    return paths


class BadImageError(Exception):
    """Internal: one file could not be decoded (caught per item)."""


def decode_image_file(path: Path, channels: int) -> torch.Tensor:
    """Decode an image file to uint8 (channels, H, W), EXIF orientation applied.

    torchvision decodes PNG/JPEG/GIF/WEBP; PIL takes whatever else it can open.

    Raises:
        BadImageError: empty, truncated, corrupt or not an image.
    """
    _check_channels(channels)
    data = _read_encoded(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image = _decode_with_torchvision(data, channels)
    return _finish_decode(path, data, image, channels)


def _check_channels(channels: int) -> None:
    if channels not in (1, 3):
        raise ValueError(f"models with {channels} input channels are not supported (1 or 3)")


def _read_encoded(path: Path) -> torch.Tensor:
    """The file's bytes as a 1-D uint8 tensor over a writable buffer (no copy, no warning).

    A member path of a tar shard (``pool-000003.tar#img.png``, :mod:`pucli.shards`) reads that member.

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


def _decode_with_torchvision(data: torch.Tensor, channels: int) -> torch.Tensor | None:
    """torchvision's decode of ``data``, or None when it cannot read it (PIL's turn).

    Callers silence warnings around it: torchvision warns of its own deprecation on every call,
    and a batch is cheaper to wrap once than each image.
    """
    if not _safe_for_torchvision(data):
        return None
    try:
        return decode_image(data, mode=ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB,
                            apply_exif_orientation=True)
    except (RuntimeError, ValueError):
        return None


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by colour type


def _safe_for_torchvision(data: torch.Tensor) -> bool:
    """Whether torchvision may decode ``data``; False leaves the file to PIL, which checks it.

    torchvision has no decompression-bomb guard (a PNG or JPEG header of a few bytes can announce
    30,000 x 30,000 pixels, gigabytes once decoded), and its PNG decoder crashes the whole process
    (segmentation fault, torchvision 0.29) on a PNG whose image data ends early ("Not enough image
    data"). PIL refuses the first (:class:`PIL.Image.DecompressionBombError`) and reports the
    second as truncated, so one bad file is skipped, not fatal.
    """
    from PIL import Image

    view = memoryview(data.numpy())
    limit = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else None  # PIL's error threshold
    if view[:8] == _PNG_SIGNATURE:
        return _png_is_whole(view, limit)
    if view[:2] == b"\xff\xd8":
        size = _jpeg_size(view)
        return size is None or limit is None or size[0] * size[1] <= limit
    return True


def _png_is_whole(view: memoryview, limit: int | None) -> bool:
    """A plain (non-interlaced) PNG within ``limit`` pixels whose IDAT stream inflates to at least
    the bytes its header promises. Costs one more inflate of the image data: measured, about 20 us
    on a 28 x 28 PNG and half of torchvision's decode time on a 256 x 256 RGB one."""
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


class Preprocess:
    """The deterministic evaluation transform of a model's config (timm's eval recipe).

    :meth:`resize` works per image in the loader workers: uint8 (C, H, W) -> uint8 (C, h, w) at the
    model's input size (shorter side to ``size / crop_pct``, then centre crop). :meth:`normalize`
    works per batch on the model's device: uint8 (B, C, h, w) -> float32, ``(x/255 - mean) / std``.
    """

    def __init__(self, config: ModelConfig) -> None:
        from torchvision.transforms import InterpolationMode

        self.channels = config.in_chans
        self.size = (config.input_size[1], config.input_size[2])
        self.crop_pct = config.crop_pct
        self.interpolation = InterpolationMode(config.interpolation if config.interpolation != "random" else "bilinear")
        self.mean = torch.tensor(config.mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(config.std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0

    def resize(self, image: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as F

        if tuple(image.shape[-2:]) == self.size:
            return image
        scale = [math.floor(s / self.crop_pct) for s in self.size]
        if self.size[0] == self.size[1]:
            image = F.resize(image, scale[0], interpolation=self.interpolation, antialias=True)
        else:
            image = F.resize(image, scale, interpolation=self.interpolation, antialias=True)
        return F.center_crop(image, list(self.size))

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        mean = self.mean.to(batch.device)
        std = self.std.to(batch.device)
        return (batch.float() - mean) / std


class ImageDataset(Dataset):
    """Decoded, resized images of ``paths``; item ``i`` is ``(i, image or None, label, reason)``.

    A DataLoader with a batch size fetches through :meth:`__getitems__`, a whole batch per call.
    """

    def __init__(self, paths: Sequence[Path], preprocess: Preprocess, labels: Sequence[int] | None = None) -> None:
        self.paths = list(paths)
        self.labels = list(labels) if labels is not None else None
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, int, str | None]:
        label = self.labels[index] if self.labels is not None else -1
        try:
            image = self.preprocess.resize(decode_image_file(self.paths[index], self.preprocess.channels))
        except BadImageError as exc:
            return index, None, label, str(exc)
        return index, image, label, None

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        """The items ``indices`` already collated, in order: what ``collate`` would make of
        ``[self[i] for i in indices]``.

        DataLoader calls this once per batch in the worker: one warnings context, one stack and
        one set of index/label tensors per batch instead of per image.
        """
        channels = self.preprocess.channels
        _check_channels(channels)
        encoded: list[tuple[int, torch.Tensor | None, torch.Tensor | None, str | None]] = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for index in indices:
                try:
                    data = _read_encoded(self.paths[index])
                except BadImageError as exc:
                    encoded.append((index, None, None, str(exc)))
                    continue
                encoded.append((index, data, _decode_with_torchvision(data, channels), None))
        # PIL's fallback and the resize run outside the warnings context, as in decode_image_file.
        samples: list[tuple[int, torch.Tensor | None, int, str | None]] = []
        for index, data, decoded, reason in encoded:
            label = self.labels[index] if self.labels is not None else -1
            if data is not None:
                try:
                    image = self.preprocess.resize(_finish_decode(self.paths[index], data, decoded, channels))
                except BadImageError as exc:
                    reason = str(exc)
                else:
                    samples.append((index, image, label, None))
                    continue
            samples.append((index, None, label, reason))
        return collate(samples)


@dataclass
class Batch:
    """``images`` (B, C, h, w) uint8; ``indices`` (B,) int64 positions in the dataset; ``labels`` (B,)
    int64 (-1 when unlabeled); ``failed`` lists (index, reason) of the items dropped from it."""

    indices: torch.Tensor
    images: torch.Tensor
    labels: torch.Tensor
    failed: list[tuple[int, str]]


def collate(samples: list[tuple[int, torch.Tensor | None, int, str | None]] | Batch) -> Batch:
    """Items of :class:`ImageDataset` to a :class:`Batch`; a batch that
    :meth:`ImageDataset.__getitems__` already made passes through."""
    if isinstance(samples, Batch):
        return samples
    good = [s for s in samples if s[1] is not None]
    failed = [(s[0], s[3] or "unreadable") for s in samples if s[1] is None]
    if good:
        images = torch.stack([s[1] for s in good])  # type: ignore[misc]
    else:
        images = torch.empty(0, dtype=torch.uint8)
    return Batch(
        indices=torch.tensor([s[0] for s in good], dtype=torch.int64),
        images=images,
        labels=torch.tensor([s[2] for s in good], dtype=torch.int64),
        failed=failed,
    )


def iterate_batches(
    dataset: ImageDataset,
    *,
    batch_size: int = 256,
    workers: int = 0,
    pin_memory: bool = False,
    skipped: list[SkippedFile] | None = None,
) -> Iterator[Batch]:
    """Batches of ``dataset`` in order; unreadable files are appended to ``skipped`` and left out.

    Memory stays flat in the size of the dataset: batches are produced and dropped one by one.
    """
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
    )
    for batch in loader:
        if skipped is not None:
            skipped.extend(SkippedFile(str(dataset.paths[i]), reason) for i, reason in batch.failed)
        if len(batch.indices):
            yield batch
