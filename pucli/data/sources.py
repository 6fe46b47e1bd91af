"""Image sources: labeled class folders (positive set, test set) and the unlabeled pool.

- A **labeled folder** has one subfolder per class. Classes map to the model's outputs by the
  model's ``label_names`` when it has them, else by sorted folder names, or by a classes file
  (``classes_file``: one class name per line, in output order). Tar shards serve as well (a ``.tar`` or a
  brace pattern of them): each image member ``.../<class>/<file>`` belongs to the class its
  parent folder names, and is read in place as the member path ``x.tar#member``
  (:mod:`pucli.data.shards`).
- The **unlabeled pool** is a folder scanned recursively for image files, a text file with one
  image path per line, or ``-`` for such a list on stdin; or tar shards, whose image members are
  read in place (:mod:`pucli.data.shards`).

Decoding is :mod:`pucli.data.decode`; batching and the evaluation transform :mod:`pucli.data.loading`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TextIO

from pucli.data.files import IMAGE_EXTENSIONS, read_path_list, scan_images
from pucli.data.shards import expand_braces, is_shard_name, shard_members, split_member
from pucli.errors import ClassMappingError, NoImagesError, UsageError

__all__ = ["LabeledFolder", "UnlabeledPool", "read_class_names"]


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
        parameter: str = "positive",
    ) -> LabeledFolder:
        """Scan ``root/<class>/**/<image>``, or the image members ``.../<class>/<file>`` of tar
        shards (``root`` a ``.tar`` or a brace pattern of them; module docstring).

        Args:
            num_classes: the model's number of outputs.
            label_names: the model's class names in output order, if known.
            classes_file: text file of class names in output order; wins over ``label_names``.
            parameter: the parameter that named ``root``, which errors name (``positive``, ``data``, ...).

        Raises:
            UsageError: ``root`` missing or not a folder (or shard); bad ``classes_file``.
            ClassMappingError: folders that do not map onto the model's classes.
            NoImagesError: no image file in any class folder.
            DataError: a shard that is not an uncompressed tar file.
        """
        root = Path(root)
        if is_shard_name(root) and not root.is_dir():
            return cls._from_shards(str(root), num_classes=num_classes, label_names=label_names,
                                    classes_file=classes_file, parameter=parameter)
        if not root.exists():
            raise UsageError(f"{parameter} {root} does not exist: give a folder with one subfolder per class",
                             parameter=parameter, path=root)
        if not root.is_dir():
            raise UsageError(f"{parameter} {root} is not a folder: give a folder with one subfolder per class",
                             parameter=parameter, path=root)
        folders = sorted(entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith("."))
        if not folders:
            raise NoImagesError(f"{parameter} {root} has no class subfolders: put each class's images in {root}/<class>/",
                                parameter=parameter, path=root)
        folder_to_class, names = _class_mapping(folders, root, num_classes=num_classes, label_names=label_names,
                                                classes_file=classes_file, parameter=parameter)
        from torchvision.datasets.folder import make_dataset

        items = make_dataset(root, folder_to_class, extensions=IMAGE_EXTENSIONS, allow_empty=True)
        if not items:
            raise NoImagesError(f"{parameter} {root} holds no image files ({', '.join(IMAGE_EXTENSIONS)})",
                                parameter=parameter, path=root)
        return cls(
            root=root,
            class_names=names,
            paths=[Path(p) for p, _ in items],
            labels=[label for _, label in items],
            folder_to_class=folder_to_class,
        )

    @classmethod
    def _from_shards(cls, source: str, *, num_classes: int, label_names: Sequence[str] | None,
                     classes_file: str | os.PathLike[str] | None, parameter: str) -> LabeledFolder:
        """The labeled images of tar shards: every image member ``.../<class>/<file>``, its class
        the member's parent folder; ordered as a folder is (by class name, then member name).

        Raises:
            UsageError: a shard that does not exist.
            DataError: a shard that is not an uncompressed tar file.
            NoImagesError: no image member inside a folder.
            ClassMappingError: as :meth:`from_folder`.
        """
        members = shard_members(expand_braces(source), parameter=parameter)
        by_class: dict[str, list[Path]] = {}
        for member in members:
            name = PurePosixPath(split_member(member)[1])  # type: ignore[index]
            if len(name.parts) >= 2:
                by_class.setdefault(name.parent.name, []).append(member)
        if not by_class:
            raise NoImagesError(f"{parameter} {source} has no image member inside a class folder: "
                                "pack the images as <class>/<file> (each member's parent folder names its class)",
                                parameter=parameter, path=source)
        folders = sorted(by_class)
        folder_to_class, names = _class_mapping(folders, Path(source), num_classes=num_classes, label_names=label_names,
                                                classes_file=classes_file, parameter=parameter)
        paths: list[Path] = []
        labels: list[int] = []
        for folder in folders:
            for member in sorted(by_class[folder], key=lambda path: split_member(path)[1]):  # type: ignore[index]
                paths.append(member)
                labels.append(folder_to_class[folder])
        return cls(root=Path(source), class_names=names, paths=paths, labels=labels, folder_to_class=folder_to_class)


def _class_mapping(folders: Sequence[str], root: Path, *, num_classes: int, label_names: Sequence[str] | None,
                   classes_file: str | os.PathLike[str] | None, parameter: str) -> tuple[dict[str, int], list[str]]:
    """``(folder -> output index, class names in output order)`` of a labeled source's class
    folders: by ``classes_file``, else the model's ``label_names``, else the sorted folder names.

    Raises:
        UsageError: a bad ``classes_file``.
        ClassMappingError: folders that do not map onto the model's classes.
    """
    if classes_file is not None:
        names = read_class_names(classes_file, num_classes)
        source = f"`classes_file` {classes_file}"
    elif label_names is not None:
        names, source = list(label_names), "the teacher's label_names"
    else:
        if len(folders) != num_classes:
            raise ClassMappingError(
                f"{parameter} {root} has {len(folders)} class folders but the teacher has {num_classes} outputs: "
                "pass `classes_file=FILE` listing the teacher's classes in output order", parameter=parameter, path=root)
        names, source = list(folders), "sorted folder names"
    index = {name: k for k, name in enumerate(names)}
    unknown = [name for name in folders if name not in index]
    if unknown:
        shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
        raise ClassMappingError(
            f"{parameter} {root}: folder(s) {', '.join(unknown[:5])} are not classes of the teacher "
            f"(by {source}: {shown}); rename them or pass `classes_file=FILE`", parameter=parameter, path=root)
    return {name: index[name] for name in folders}, names


def read_class_names(path: str | os.PathLike[str], num_classes: int) -> list[str]:
    """Class names, one per line, in the model's output order (blank lines and ``#`` ignored).

    Raises:
        UsageError: unreadable file, duplicate names, or a count other than ``num_classes``.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"classes_file {path} cannot be read ({exc.__class__.__name__}): give a UTF-8 text file",
                         parameter="classes_file", path=path) from exc
    names = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if len(names) != num_classes:
        raise UsageError(f"classes_file {path} lists {len(names)} classes but the teacher has {num_classes} outputs",
                         parameter="classes_file", path=path)
    if len(set(names)) != len(names):
        raise UsageError(f"classes_file {path} lists a class twice: each line must name a different class",
                         parameter="classes_file", path=path)
    return names


@dataclass
class UnlabeledPool:
    """The unlabeled pool: image paths in a fixed, reproducible order."""

    source: str
    paths: list[Path]

    def __len__(self) -> int:
        return len(self.paths)

    @classmethod
    def from_source(cls, source: str, *, stdin: TextIO | None = None, parameter: str = "unlabeled") -> UnlabeledPool:
        """Read a pool from a folder (recursive, sorted), a path-list file, ``-`` (stdin), or tar
        shards: a shard, a brace pattern of shards (``pool-{000000..000099}.tar``), or shards named
        in the path list; a shard contributes its image members (:mod:`pucli.data.shards`). Errors name
        ``parameter``, the parameter that named ``source``.

        Raises:
            UsageError: the source (or a shard it names) does not exist.
            DataError: a shard is not an uncompressed tar file.
            NoImagesError: the source names no image.
        """
        if is_shard_name(source) and not Path(source).is_dir():
            paths = shard_members(expand_braces(source), parameter=parameter)
            where = f"shards {source}"
        elif source == "-":
            try:
                paths = read_path_list((stdin or sys.stdin), base=Path.cwd(), name=f"{parameter} - (stdin)",
                                       parameter=parameter)
            except UnicodeDecodeError as exc:
                raise UsageError(f"{parameter} -: stdin is not a UTF-8 list of image paths; pipe one path per line",
                                 parameter=parameter, path="-") from exc
            where = "the path list on stdin"
        else:
            root = Path(source)
            if not root.exists():
                raise UsageError(f"{parameter} {root} does not exist: give a folder of images, a file listing image paths, or -",
                                 parameter=parameter, path=root)
            if root.is_dir():
                paths = scan_images(root)
                where = f"folder {root}"
            else:
                try:
                    with root.open(encoding="utf-8") as handle:
                        paths = read_path_list(handle, base=root.parent, name=f"{parameter} {root}", parameter=parameter)
                except UnicodeDecodeError as exc:
                    raise UsageError(
                        f"{parameter} {root} is neither a folder nor a text list of image paths: give one of those",
                        parameter=parameter, path=root) from exc
                where = f"path list {root}"
        if any(is_shard_name(path) for path in paths):
            paths = _expand_listed_shards(paths, parameter)
        if not paths:
            raise NoImagesError(f"{parameter}: {where} names no image file; check the path", parameter=parameter,
                                path=source)
        return cls(source=source, paths=paths)


def _expand_listed_shards(paths: list[Path], parameter: str) -> list[Path]:
    """A path list's entries with every shard (or shard pattern) replaced by its image members."""
    expanded: list[Path] = []
    for path in paths:
        if is_shard_name(path):
            expanded.extend(shard_members(expand_braces(str(path)), parameter=parameter))
        else:
            expanded.append(path)
    return expanded
