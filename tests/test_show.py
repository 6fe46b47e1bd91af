"""Contact sheets of a selection (pucli.show): which images, the layout, and that only they are decoded."""

from __future__ import annotations

import json
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_png
from PIL import Image

from pucli.data.index import IndexEntry, write_index
from pucli.errors import UsageError
from pucli.show import write_preview
from pucli.show.render import _FRAME, write_sheet
from pucli.show.sampling import sheet_from_expanded, sheet_from_index, sheet_from_source


def _index(tmp_path: Path, scores: list[float], kept: list[bool], *, make_files: bool = True) -> list[IndexEntry]:
    entries = []
    for i, (score, selected) in enumerate(zip(scores, kept)):
        path = tmp_path / "pool" / f"u{i:05d}.png"
        if make_files:
            write_png(path, seed=i)
        entries.append(IndexEntry(path, score, selected))
    return entries


def _frame_pixels(png: Path, colour: tuple[int, int, int]) -> int:
    pixels = np.asarray(Image.open(png).convert("RGB"))
    return int(np.all(pixels == colour, axis=-1).sum())


def test_groups_show_top_kept_both_sides_of_the_threshold_and_random_rejected(tmp_path: Path) -> None:
    scores = [float(s) for s in np.linspace(5, -5, 101)]  # 5.0 ... -5.0, 0.0 in the middle
    entries = _index(tmp_path, scores, [s > 0 for s in scores], make_files=False)
    sheet = sheet_from_index(entries, per_group=4, seed=1)
    top, kept_edge, rejected_edge, random_rejected = ([t.score for t in g.tiles] for g in sheet.groups)
    assert top == pytest.approx([5.0, 4.9, 4.8, 4.7])
    assert kept_edge == pytest.approx([0.4, 0.3, 0.2, 0.1])
    assert rejected_edge == pytest.approx([0.0, -0.1, -0.2, -0.3])
    assert len(random_rejected) == 4 and all(s < -0.3 for s in random_rejected)
    assert random_rejected == sorted(random_rejected, reverse=True)
    assert sheet.threshold == pytest.approx(0.05) and sheet.counts == {"total": 101, "kept": 50, "rejected": 51}
    assert [t.score for t in sheet_from_index(entries, per_group=4, seed=1).groups[3].tiles] == random_rejected


def test_an_index_of_kept_images_only_says_how_to_see_the_rejected(tmp_path: Path) -> None:
    entries = _index(tmp_path, [3.0, 2.0, 1.0], [True] * 3, make_files=False)
    sheet = sheet_from_index(entries, per_group=2)
    assert [g.title for g in sheet.groups] == ["Top kept", "Kept, nearest the threshold"]
    assert [t.score for g in sheet.groups for t in g.tiles] == [3.0, 2.0, 1.0]  # no image twice
    assert sheet.threshold is None and any("`pucli select all_items=True`" in note for note in sheet.notes)


def test_a_pool_of_50k_entries_decodes_only_the_images_shown(tmp_path: Path, monkeypatch) -> None:
    from pucli.data import decode

    rng = np.random.default_rng(0)
    scores = rng.normal(size=50_000)
    index = tmp_path / "index.tsv"
    write_index((IndexEntry(Path(f"/nowhere/pool/{i:07d}.png"), float(s), bool(s > 0.5)) for i, s in enumerate(scores)),
                index, with_selected=True)
    decoded: list[Path] = []

    def fake_decode(path: Path, channels: int) -> torch.Tensor:
        decoded.append(path)
        return torch.full((channels, 28, 28), 128, dtype=torch.uint8)

    monkeypatch.setattr(decode, "decode_image_file", fake_decode)
    summary = write_preview(index, tmp_path / "sheet.png", per_group=16)
    assert len(decoded) == summary.shown == 64 and len(set(decoded)) == 64
    assert summary.counts == {"total": 50_000, "kept": int((scores > 0.5).sum()), "rejected": int((scores <= 0.5).sum())}


def test_png_layout_frames_every_tile_in_its_group_colour(tmp_path: Path, make_class_folder) -> None:
    scores = [float(s) for s in np.linspace(2, -2, 40)]
    entries = _index(tmp_path, scores, [s > 0 for s in scores])
    positive = make_class_folder("positive", classes=["a", "b"], per_class=3)
    out = tmp_path / "sheet.png"
    summary = write_preview(entries, out, positive=positive, per_group=5, columns=4, thumb=32)
    assert summary.groups == [("labeled positives: class a", 3), ("labeled positives: class b", 3), ("Top kept", 5),
                              ("Kept, nearest the threshold", 5), ("Rejected, nearest the threshold", 5), ("Rejected, random", 5)]
    ring = (32 + 6) ** 2 - 32 ** 2  # a 3-pixel frame around each 32-pixel thumbnail
    assert _frame_pixels(out, _FRAME["kept"]) == 10 * ring
    assert _frame_pixels(out, _FRAME["rejected"]) == 10 * ring
    assert _frame_pixels(out, _FRAME["positive"]) == 6 * ring
    with Image.open(out) as image:
        assert image.width == 720  # narrow sheets keep room for the histogram
        taller = write_preview(entries, tmp_path / "taller.png", positive=positive, per_group=9, columns=4, thumb=32)
        assert taller.shown == 6 + 36 and Image.open(tmp_path / "taller.png").height > image.height


def test_html_is_one_self_contained_page_with_every_tile_embedded(tmp_path: Path, make_class_folder) -> None:
    scores = [float(s) for s in np.linspace(2, -2, 30)]
    entries = _index(tmp_path, scores, [s > 0 for s in scores])
    out = tmp_path / "sheet.html"
    summary = write_preview(entries, out, positive=make_class_folder("positive", classes=["a"], per_class=2),
                            class_prior=0.3, prior_source="given", per_group=4)
    text = out.read_text(encoding="utf-8")

    class Collect(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.sources: list[str] = []
            self.links: list[str] = []

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            values = dict(attrs)
            if tag == "img":
                self.sources.append(values.get("src") or "")
            if tag in ("link", "script") or (tag != "svg" and "href" in values):
                self.links.append(tag)

    parser = Collect()
    parser.feed(text)
    assert len(parser.sources) == summary.shown == 2 + 16
    assert all(src.startswith("data:image/png;base64,") for src in parser.sources)
    assert not parser.links and "<svg" in text  # no external file; the histogram is inline SVG
    assert "class prior 0.3 (given)" in text and "Rejected, nearest the threshold" in text


def test_tar_shard_members_and_unreadable_files_are_drawn(tmp_path: Path, make_pool) -> None:
    from pucli.data.shards import pack_folder

    pool = make_pool("pool", count=6)
    packed = pack_folder(pool, str(tmp_path / "pool-%06d.tar"), images_per_shard=4)
    members = [Path(f"{shard}#{name}") for shard in packed.shards for name in _members(shard)]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    entries = [IndexEntry(p, 1.0 - i / 10, True) for i, p in enumerate(members)] + [IndexEntry(broken, -1.0, False)]
    summary = write_preview(entries, tmp_path / "sheet.png", per_group=8)
    assert summary.shown == 7 and summary.unreadable == 1


def _members(shard: Path) -> list[str]:
    from pucli.data.shards import list_members

    return list_members(shard)


def test_the_class_prior_comes_from_the_run_report_beside_the_index(tmp_path: Path) -> None:
    index = tmp_path / "index.tsv"
    write_index(_index(tmp_path, [1.0, -1.0], [True, False], make_files=False), index, with_selected=True)
    (tmp_path / "index.report.json").write_text(json.dumps(
        {"command": "select", "results": {"class_prior": 0.2989, "class_prior_source": "estimated"}}))
    sheet = sheet_from_index(index)
    assert (sheet.class_prior, sheet.prior_source) == (0.2989, "estimated")
    (tmp_path / "index.report.json").write_text("{not json")
    assert sheet_from_index(index).class_prior is None  # a sheet is still drawn


def test_an_expanded_set_groups_pool_images_by_the_teachers_class(tmp_path: Path) -> None:
    from pucli.data.manifest import write_expanded_set
    from pucli.kd.expand import build_expanded_set

    paths, origins, labels, scores, targets = [], [], [], [], []
    for i in range(12):
        k = i % 3
        paths.append(write_png(tmp_path / "img" / f"{i}.png", seed=i))
        origins.append("positive" if i < 3 else "unlabeled")
        labels.append(k if i < 3 else -1)
        scores.append(None if i < 3 else float(i))
        row = torch.full((3,), 0.1)
        row[k] = 0.8
        targets.append(row)
    expanded = build_expanded_set(paths=paths, origins=origins, labels=labels, scores=scores, soft_targets=torch.stack(targets),
                                  temperature=1.0, teacher_digest="sha256:0", class_names=["x", "y", "z"])
    folder = tmp_path / "expanded"
    folder.mkdir()
    write_expanded_set(expanded, folder)
    sheet = sheet_from_expanded(folder, per_group=8)
    assert [g.title for g in sheet.groups] == ["Class x", "Class y", "Class z"]
    for k, group in enumerate(sheet.groups):
        assert [t.kind for t in group.tiles] == ["positive", None, None, None]
        assert {t.path for t in group.tiles[1:]} == {paths[i] for i in range(3, 12) if i % 3 == k}
    assert sheet.counts == {"total": 12, "kept": 9, "rejected": 0, "positive": 3}
    assert write_sheet(sheet, tmp_path / "classes.png").shown == 12
    with pytest.raises(UsageError, match="expanded set"):
        sheet_from_source(folder, positive=tmp_path)


def test_without_matplotlib_the_sheet_is_drawn_and_says_how_to_get_the_histogram(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails as if not installed
    entries = _index(tmp_path, [1.0, -1.0], [True, False])
    summary = write_preview(entries, tmp_path / "sheet.png")
    assert not summary.histogram and any("pucli[plot]" in note for note in summary.notes)
    assert summary.shown == 2


def test_bad_sheet_options_are_usage_errors(tmp_path: Path) -> None:
    entries = _index(tmp_path, [1.0], [True], make_files=False)
    with pytest.raises(UsageError, match=r"\.png or \.html"):
        write_preview(entries, tmp_path / "sheet.jpg")
    with pytest.raises(UsageError, match="per_group"):
        write_preview(entries, tmp_path / "sheet.png", per_group=0)
    with pytest.raises(UsageError, match="positive"):
        write_preview(entries, tmp_path / "sheet.png", positive=tmp_path / "missing")
    assert not (tmp_path / "sheet.png").exists()


@pytest.mark.slow
def test_the_html_sheet_renders_in_headless_chromium_with_every_thumbnail(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("show_screenshot", Path(__file__).parents[1] / "benchmarks" / "show_screenshot.py")
    browser = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(browser)  # type: ignore[union-attr]
    if browser.find_chromium() is None:
        pytest.skip("no chromium on PATH (apt-get install chromium)")
    magenta = (255, 0, 255)  # a colour nothing else on the page has
    entries = []
    for i in range(12):
        path = tmp_path / "pool" / f"u{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.new("RGB", (28, 28), magenta).save(path)
        entries.append(IndexEntry(path, 1.0 - i / 6, i < 6))
    summary = write_preview(entries, tmp_path / "sheet.html", per_group=3, thumb=64)
    shot = browser.screenshot(tmp_path / "sheet.html", tmp_path / "shot.png", width=900, height=2000)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    drawn = int((np.abs(pixels - magenta).sum(axis=-1) < 30).sum())
    assert summary.shown == 12 and drawn == pytest.approx(12 * 64 * 64, rel=0.05)  # every thumbnail, at full size
    assert _frame_pixels(shot, (34, 139, 34)) > 0 and _frame_pixels(shot, (205, 38, 38)) > 0  # kept and rejected frames


def test_write_preview_takes_a_selection_result_as_select_holds_it(tmp_path: Path) -> None:
    from types import SimpleNamespace

    paths = [write_png(tmp_path / "pool" / f"u{i}.png", seed=i) for i in range(6)]
    result = SimpleNamespace(paths=paths, scores=torch.tensor([2.0, -1.0, 1.0, -2.0, 0.5, -0.5]),
                             selected=torch.tensor([True, False, True, False, True, False]))
    summary = write_preview(result, tmp_path / "preview.png", class_prior=0.5, prior_source="estimated", per_group=2)
    assert summary.counts == {"total": 6, "kept": 3, "rejected": 3} and summary.class_prior == 0.5
    assert summary.groups == [("Top kept", 2), ("Kept, nearest the threshold", 1), ("Rejected, nearest the threshold", 2),
                              ("Rejected, random", 1)]
