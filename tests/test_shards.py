"""Tar shards as an unlabeled pool (pucli.shards): brace patterns, packing, member paths read back."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from pucli.cli import app
from pucli.data.decode import decode_image_file
from pucli.data.index import read_index
from pucli.data.manifest import read_expanded_set
from pucli.data.shards import expand_braces, member_exists, member_path, pack_folder, split_member
from pucli.data.sources import UnlabeledPool
from pucli.errors import DataError, UsageError

FAST = ["--epochs", "1", "--ensemble", "1", "--batch-size", "8", "--workers", "0", "--threads", "1", "--no-cache"]


def test_brace_ranges_keep_zero_padding_and_lists_combine_in_order() -> None:
    assert expand_braces("pool-{000000..000002}.tar") == ["pool-000000.tar", "pool-000001.tar", "pool-000002.tar"]
    assert expand_braces("{a,b}-{1..2}") == ["a-1", "a-2", "b-1", "b-2"]
    assert expand_braces("{3..1}") == ["3", "2", "1"]
    assert expand_braces("x{a,{b,c}}y") == ["xay", "xby", "xcy"]
    assert expand_braces("plain.tar") == ["plain.tar"]


@pytest.mark.parametrize("pattern", ["pool-{000..002.tar", "pool-000}.tar"])
def test_unbalanced_braces_are_a_usage_error(pattern: str) -> None:
    with pytest.raises(UsageError):
        expand_braces(pattern)


def test_member_path_splits_at_the_first_tar_hash() -> None:
    path = member_path(Path("/data/pool-000003.tar"), "part0/img123.png")
    assert str(path) == "/data/pool-000003.tar#part0/img123.png"
    assert split_member(path) == (Path("/data/pool-000003.tar"), "part0/img123.png")
    assert split_member(Path("/data/a#b.png")) is None


def test_packed_shards_make_the_same_pool_as_the_folder(make_pool: Callable[..., Path], tmp_path: Path) -> None:
    folder = make_pool("pool", count=10)
    (tmp_path / "shards").mkdir()
    packed = pack_folder(folder, str(tmp_path / "shards" / "pool-%06d.tar"), images_per_shard=4)
    assert [p.name for p in packed.shards] == ["pool-000000.tar", "pool-000001.tar", "pool-000002.tar"]
    assert packed.counts == [4, 4, 2]
    assert packed.pattern() == str(tmp_path / "shards" / "pool-{000000..000002}.tar")

    loose = UnlabeledPool.from_source(str(folder))
    sharded = UnlabeledPool.from_source(packed.pattern())
    assert [split_member(p)[1] for p in sharded.paths] == [p.relative_to(folder).as_posix() for p in loose.paths]
    for member, file in zip(sharded.paths, loose.paths):
        assert torch.equal(decode_image_file(member, 1), decode_image_file(file, 1))


def test_a_list_file_may_name_shards_patterns_and_loose_images(make_pool: Callable[..., Path], tmp_path: Path) -> None:
    folder = make_pool("pool", count=6)
    (tmp_path / "shards").mkdir()
    pack_folder(folder, str(tmp_path / "shards" / "p-%02d.tar"), images_per_shard=3)
    loose = sorted(folder.rglob("*.png"))[0]
    listing = tmp_path / "pool.txt"
    listing.write_text(f"# shards, then one loose file\nshards/p-{{00..01}}.tar\n{loose}\n")
    pool = UnlabeledPool.from_source(str(listing))
    assert len(pool) == 7
    assert split_member(pool.paths[0])[0] == tmp_path / "shards" / "p-00.tar"
    assert pool.paths[-1] == loose


def test_members_named_with_dot_slash_by_tar_are_found(tmp_path: Path, make_pool: Callable[..., Path]) -> None:
    image = sorted(make_pool("pool", count=1).rglob("*.png"))[0]
    shard = tmp_path / "dot.tar"
    with tarfile.open(shard, "w") as archive:
        archive.add(image, arcname="./a.png")
        info = tarfile.TarInfo("./a.cls")
        info.size = 1
        archive.addfile(info, io.BytesIO(b"3"))  # WebDataset label sibling: not an image, not a pool item
    pool = UnlabeledPool.from_source(str(shard))
    assert [str(p) for p in pool.paths] == [f"{shard}#a.png"]
    assert torch.equal(decode_image_file(pool.paths[0], 1), decode_image_file(image, 1))
    assert member_exists(pool.paths[0]) and not member_exists(Path(f"{shard}#missing.png"))


def test_upper_case_shards_and_folded_member_names_are_read(tmp_path: Path, make_pool: Callable[..., Path]) -> None:
    image = sorted(make_pool("pool", count=1).rglob("*.png"))[0]
    shard = tmp_path / "POOL.TAR"
    with tarfile.open(shard, "w") as archive:
        archive.add(image, arcname="sub//b.png")  # pathlib folds "//": the member must still be found
    pool = UnlabeledPool.from_source(str(shard))
    assert [str(p) for p in pool.paths] == [f"{shard}#sub/b.png"]
    assert split_member(pool.paths[0]) == (shard, "sub/b.png")
    assert member_exists(pool.paths[0])
    assert torch.equal(decode_image_file(pool.paths[0], 1), decode_image_file(image, 1))


def test_compressed_shards_are_refused_with_a_fix(tmp_path: Path, make_pool: Callable[..., Path]) -> None:
    shard = tmp_path / "pool.tar.gz"
    with tarfile.open(shard, "w:gz") as archive:
        archive.add(sorted(make_pool("pool", count=1).rglob("*.png"))[0], arcname="a.png")
    with pytest.raises(DataError, match="plain .tar"):
        UnlabeledPool.from_source(str(shard))


def test_a_missing_shard_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        UnlabeledPool.from_source(str(tmp_path / "pool-{0..1}.tar"))


def test_select_on_shards_scores_like_the_folder_and_expand_reads_the_members(
    tiny_teacher: Path, make_class_folder: Callable[..., Path], make_pool: Callable[..., Path], tmp_path: Path,
) -> None:
    positive, folder = make_class_folder("pos", per_class=2), make_pool("pool", count=16)
    (tmp_path / "shards").mkdir()
    runner = CliRunner()
    packed = runner.invoke(app, ["shards", "pack", str(folder), "--out", str(tmp_path / "shards" / "pool-%03d.tar"),
                                 "--size", "5", "-q"])
    assert packed.exit_code == 0, packed.output
    assert len(packed.stdout.split()) == 4

    def select(unlabeled: str, out: Path) -> list:
        result = runner.invoke(app, ["select", "--positive", str(positive), "--unlabeled", unlabeled, "--teacher",
                                     str(tiny_teacher), "--prior", "0.4", "--all", "--out", str(out), *FAST, "-q"])
        assert result.exit_code == 0, result.output
        return read_index(out)

    loose = select(str(folder), tmp_path / "loose.tsv")
    sharded = select(str(tmp_path / "shards" / "pool-{000..003}.tar"), tmp_path / "sharded.tsv")
    assert [e.score for e in sharded] == [e.score for e in loose]
    assert [split_member(e.path)[1] for e in sharded] == [e.path.relative_to(folder).as_posix() for e in loose]

    expanded = runner.invoke(app, ["expand", "--positive", str(positive), "--index", str(tmp_path / "sharded.tsv"),
                                   "--teacher", str(tiny_teacher), "--out", str(tmp_path / "set"), "--workers", "0",
                                   "--threads", "1", "-q"])
    assert expanded.exit_code == 0, expanded.output
    items = read_expanded_set(tmp_path / "set")
    members = [p for p, origin in zip(items.paths, items.origins) if origin == "unlabeled"]
    assert members and all(split_member(p) is not None for p in members)
    assert len(members) == sum(e.selected for e in sharded)


def test_pack_refuses_to_replace_existing_shards_without_force(make_pool: Callable[..., Path], tmp_path: Path) -> None:
    folder = make_pool("pool", count=3)
    out = str(tmp_path / "pool-%06d.tar")
    first = CliRunner().invoke(app, ["shards", "pack", str(folder), "--out", out, "--quiet"])
    assert first.exit_code == 0, first.output
    before = (tmp_path / "pool-000000.tar").read_bytes()
    again = CliRunner().invoke(app, ["shards", "pack", str(folder), "--out", out, "--quiet"])
    assert again.exit_code == 2 and "--force" in again.stderr
    assert (tmp_path / "pool-000000.tar").read_bytes() == before
    forced = CliRunner().invoke(app, ["shards", "pack", str(folder), "--out", out, "--quiet", "--force"])
    assert forced.exit_code == 0, forced.output


def _tar(path: Path, members: list[tuple[str, bytes | None, bytes]], fmt: int) -> Path:
    """A tar at ``path`` with ``(name, data or None for a directory, type)`` members in format ``fmt``."""
    with tarfile.open(path, "w", format=fmt) as archive:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            info.type = kind
            if kind == tarfile.SYMTYPE:
                info.linkname = "a.png"
            if data is not None and kind == tarfile.REGTYPE:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
            else:
                archive.addfile(info)
    return path


_PLAIN = [("a.png", b"\x89PNG" + b"x" * 700, tarfile.REGTYPE), ("dir", None, tarfile.DIRTYPE),
          ("dir/b.jpg", b"y" * 512, tarfile.REGTYPE), ("link.png", None, tarfile.SYMTYPE),
          ("./c.png", b"", tarfile.REGTYPE), ("d//e.webp", b"z" * 1025, tarfile.REGTYPE),
          ("p" * 90 + "/" + "q" * 60 + ".png", b"w" * 3, tarfile.REGTYPE)]  # a ustar prefix + name


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_plain_headers_are_parsed_as_tarfile_reads_them(tmp_path: Path, fmt: int) -> None:
    from pucli.data import shards

    # Only ustar splits a long name into prefix + name; GNU and pax write it as an extended header.
    members = _PLAIN if fmt == tarfile.USTAR_FORMAT else _PLAIN[:-1]
    shard = _tar(tmp_path / "s.tar", members, fmt)
    fast = shards._plain_ustar_members(str(shard))
    assert fast is not None and fast == shards._tarfile_members(str(shard), shard)
    assert sorted(fast) == sorted(n.replace("./", "").replace("//", "/") for n, d, k in members if k == tarfile.REGTYPE)
    offset, size = fast["dir/b.jpg"]
    assert size == 512 and shard.read_bytes()[offset:offset + size] == b"y" * 512


@pytest.mark.parametrize("case", ["gnu-long-name", "pax-unicode", "bad-checksum", "truncated", "not-a-tar"])
def test_other_headers_fall_back_to_tarfile(tmp_path: Path, case: str) -> None:
    """Extended headers, damage and foreign files: the fast reader declines (None) and the
    member table is tarfile's, with tarfile's errors."""
    from pucli.data import shards

    shard = tmp_path / "s.tar"
    if case == "gnu-long-name":
        _tar(shard, [("n" * 150 + ".png", b"a" * 10, tarfile.REGTYPE)], tarfile.GNU_FORMAT)
    elif case == "pax-unicode":
        _tar(shard, [("bild-ü.png", b"a" * 10, tarfile.REGTYPE)], tarfile.PAX_FORMAT)
    else:
        _tar(shard, _PLAIN[:3], tarfile.USTAR_FORMAT)
        data = bytearray(shard.read_bytes())
        if case == "bad-checksum":
            data[512 * 3] ^= 0x01  # the second member's header (after a.png's header and 2 data blocks)
        elif case == "truncated":
            data = data[:512 * 3 + 100]
        else:
            data = bytearray(b"plain text, not a tar" * 100)
        shard.write_bytes(bytes(data))
    assert shards._plain_ustar_members(str(shard)) is None
    shards._MEMBERS.pop(str(shard), None)
    if case in ("gnu-long-name", "pax-unicode"):
        table = shards._member_table(shard)
        assert list(table) == ["n" * 150 + ".png"] if case == "gnu-long-name" else ["bild-ü.png"]
    elif case == "not-a-tar":
        with pytest.raises(DataError, match="not an uncompressed tar"):
            shards._member_table(shard)
    else:  # tarfile's own reading of the damage: the members before it, or an error
        try:
            table = shards._member_table(shard)
        except DataError:
            return
        assert "a.png" in table
