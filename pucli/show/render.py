"""Draw a :class:`~pucli.show.sampling.ContactSheet`: a PNG (Pillow) or one self-contained HTML file.

Only the sheet's tiles are decoded (:func:`pucli.data.decode.decode_image_file`, so tar-shard
members work), each once. A small image is enlarged by whole pixels (nearest neighbour: what the
model sees, not a blur); a large one is shrunk with Lanczos. An unreadable file becomes a grey
tile captioned "unreadable". The score histogram is drawn by matplotlib (the ``plot`` extra);
without it the sheet is drawn without the histogram and says how to get it.

The PNG is one image: the title and counts, the histogram, then each group as a titled grid of
framed thumbnails (green: kept, red: rejected, blue: labeled positives) with their captions. The
HTML page has the same content, thumbnails embedded as ``data:`` PNGs (at their decoded size,
scaled by the browser) and the histogram as inline SVG: one file that opens anywhere, offline.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pucli.data import decode
from pucli.errors import OptionError
from pucli.paths import replace_atomically
from pucli.show.sampling import ContactSheet, Tile

__all__ = ["SheetSummary", "render_html", "render_png", "sheet_format", "write_sheet"]

FORMATS = ("png", "html")
_FRAME = {"kept": (34, 139, 34), "rejected": (205, 38, 38), "positive": (30, 100, 200)}
_CSS_FRAME = {k: "#" + "".join(f"{c:02x}" for c in v) for k, v in _FRAME.items()}
# A thumbnail larger than this is shrunk before embedding: a sheet of photos stays a few MB.
_EMBED_MAX = 192
_NO_MATPLOTLIB = "install matplotlib (pip install 'pucli[plot]') for the score histogram"


@dataclass
class SheetSummary:
    """What :func:`write_sheet` drew: ``out`` (``-`` for stdout), ``format``, the index's counts,
    threshold and class prior, images ``shown`` (decoded once each) and ``unreadable`` among them,
    groups as ``[title, tiles]`` pairs, and whether the ``histogram`` was drawn."""

    out: str
    format: str
    counts: dict[str, int]
    threshold: float | None
    class_prior: float | None
    prior_source: str | None
    shown: int
    unreadable: int
    groups: list[tuple[str, int]]
    histogram: bool
    notes: list[str] = field(default_factory=list)


def sheet_format(out: str | os.PathLike[str], fmt: str | None = None, *, parameter: str = "out") -> str:
    """``fmt``, else the format ``out``'s suffix names (``.png``; ``.html``/``.htm``); ``parameter``
    (the one that named ``out``) is named in the error.

    Raises:
        OptionError: neither names png or html.
    """
    if fmt is not None:
        if fmt not in FORMATS:
            raise OptionError("fmt", fmt, "choose png or html")
        return fmt
    suffix = Path(str(out)).suffix.lower()
    if suffix == ".png":
        return "png"
    if suffix in (".html", ".htm"):
        return "html"
    raise OptionError(parameter, out, "name a .png or .html file" + (", or give `fmt=png|html`" if parameter == "out" else ""))


def write_sheet(sheet: ContactSheet, out: str | os.PathLike[str], *, fmt: str | None = None, thumb: int = 96,
                words: Callable[[str], str] = str) -> SheetSummary:
    """Render ``sheet`` and write it to ``out`` atomically (``-``: to stdout, as bytes).

    Args:
        fmt: ``png`` or ``html``; by default from ``out``'s suffix (required for ``-``).
        thumb: tile size in pixels (square).
        words: puts the sheet's notes in a front end's words (the parameters they name, between
            backticks, as its flags: :func:`pucli.cli._errors.in_flags`); as they are by default.

    Raises:
        OptionError: no format; ``thumb`` < 16.
        OSError: ``out``'s folder is missing or not writable.
    """
    if thumb < 16:
        raise OptionError("thumb", thumb, "give at least 16 pixels")
    if str(out) == "-" and fmt is None:
        raise OptionError("out", "-", "give `fmt=png` or html")
    fmt = sheet_format(out, fmt)
    sheet = dataclasses.replace(sheet, notes=[words(note) for note in sheet.notes])
    images = {id(tile): _decode_tile(tile) for tile in sheet.tiles}
    histogram = _histogram_figure(sheet)
    data = render_png(sheet, images, histogram, thumb) if fmt == "png" else render_html(sheet, images, histogram, thumb)
    if str(out) == "-":
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        replace_atomically(out, lambda tmp: tmp.write_bytes(data))
    return SheetSummary(
        out=str(out), format=fmt, counts=dict(sheet.counts), threshold=sheet.threshold, class_prior=sheet.class_prior,
        prior_source=sheet.prior_source, shown=len(images), unreadable=sum(1 for v in images.values() if v is None),
        groups=[(f"labeled positives: class {g.title}", len(g.tiles)) for g in sheet.reference]
        + [(g.title, len(g.tiles)) for g in sheet.groups],
        histogram=histogram is not None, notes=_notes(sheet, histogram),
    )


def summary_line(sheet: ContactSheet) -> str:
    """``20,000 images · 6,011 kept (30.1 %) · 13,989 rejected · threshold 0.000306 · class prior 0.30 (given)``."""
    counts = sheet.counts
    parts = [f"{counts['total']:,} images"]
    if "positive" in counts:
        parts.append(f"{counts['positive']:,} labeled")
    parts.append(f"{counts['kept']:,} kept" + (f" ({100 * counts['kept'] / counts['total']:.1f} %)" if counts["rejected"] else ""))
    if counts["rejected"]:
        parts.append(f"{counts['rejected']:,} rejected")
    if sheet.threshold is not None:
        parts.append(f"threshold {sheet.threshold:.3g}")
    if sheet.class_prior is not None:
        parts.append(f"class prior {sheet.class_prior:.3g}" + (f" ({sheet.prior_source})" if sheet.prior_source else ""))
    else:
        parts.append("class prior unknown (no run report)")
    return " · ".join(parts)


# PNG ---------------------------------------------------------------------------------------
def render_png(sheet: ContactSheet, images: dict[int, Any], histogram: Any, thumb: int) -> bytes:
    """The sheet as PNG bytes. ``images``: ``id(tile)`` -> PIL image or None (unreadable);
    ``histogram``: a matplotlib Figure or None."""
    from PIL import Image, ImageDraw, ImageFont

    margin, gap, caption_h, frame = 16, 8, 16, 3
    cell = thumb + 2 * frame
    line_h = cell + caption_h + gap
    gutter = 72 if sheet.reference else 0  # the class names of the reference lines
    width = max(2 * margin + gutter + sheet.columns * (cell + gap) - gap, 720)
    fonts = {size: ImageFont.load_default(size=size) for size in (22, 16, 13, 11)}
    hist_image = _figure_to_image(histogram, width - 2 * margin) if histogram is not None else None
    notes = _notes(sheet, histogram)

    lines_of = [(len(g.tiles) + sheet.columns - 1) // sheet.columns for g in sheet.groups]
    height = margin + 56 + 18 * len(notes) + (hist_image.height + 12 if hist_image is not None else 0)
    height += (44 + len(sheet.reference) * line_h) if sheet.reference else 0
    height += sum(44 + n * line_h for n in lines_of) + margin
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)

    def heading(y: int, title: str, note: str) -> int:
        draw.text((margin, y + 8), title, fill="black", font=fonts[16])
        draw.text((margin + draw.textlength(title, font=fonts[16]) + 12, y + 11), note, fill=(110, 110, 110), font=fonts[13])
        return y + 44

    def tile_at(x: int, y: int, tile: Tile, colour: tuple[int, int, int]) -> None:
        image = images[id(tile)]
        draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=_FRAME.get(tile.kind or "", colour))
        canvas.paste(_fit(image, thumb), (x + frame, y + frame))
        caption = _caption(tile, image, fonts[11], cell, draw)
        draw.text((x + (cell - draw.textlength(caption, font=fonts[11])) / 2, y + cell + 2), caption,
                  fill=(40, 40, 40), font=fonts[11])

    y = margin
    draw.text((margin, y), sheet.title, fill="black", font=fonts[22])
    draw.text((margin, y + 34), summary_line(sheet), fill=(60, 60, 60), font=fonts[13])
    y += 56
    for note in notes:
        draw.text((margin, y), "note: " + note, fill=(150, 90, 0), font=fonts[13])
        y += 18
    if hist_image is not None:
        canvas.paste(hist_image, (margin, y))
        y += hist_image.height + 12
    if sheet.reference:
        y = heading(y, "Labeled positives", "your subset, per class: what the task looks like")
        for group in sheet.reference:
            draw.text((margin, y + cell // 2 - 8), f"class {group.title}", fill="black", font=fonts[13])
            for i, tile in enumerate(group.tiles[: sheet.columns]):
                tile_at(margin + gutter + i * (cell + gap), y, tile, _FRAME["positive"])
            y += line_h
    for group, lines in zip(sheet.groups, lines_of):
        y = heading(y, group.title, group.note)
        for i, tile in enumerate(group.tiles):
            tile_at(margin + gutter + (i % sheet.columns) * (cell + gap), y + (i // sheet.columns) * line_h, tile,
                    _FRAME[group.kind])
        y += lines * line_h
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _notes(sheet: ContactSheet, histogram: Any) -> list[str]:
    missing = [] if histogram is not None or not len(sheet.scores) else [_NO_MATPLOTLIB]
    return list(sheet.notes) + missing


def _caption(tile: Tile, image: Any, font: Any, width: int, draw: Any) -> str:
    """The tile's caption, shortened with an ellipsis to fit ``width`` pixels."""
    text = tile.caption if image is not None else "unreadable"
    while len(text) > 3 and draw.textlength(text, font=font) > width:
        text = text[:-2] + "…"
    return text


def _fit(image: Any, size: int) -> Any:
    """``image`` fitted into a ``size`` x ``size`` light-grey square (None: a blank grey one)."""
    from PIL import Image

    square = Image.new("RGB", (size, size), (225, 225, 225))
    if image is None:
        return square
    w, h = image.size
    scale = size / max(w, h)
    if scale >= 1:  # enlarge by whole pixels: the pixels the model sees, not a blur
        factor = max(1, int(scale))
        fitted = image.resize((w * factor, h * factor), Image.Resampling.NEAREST)
    else:
        fitted = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)
    square.paste(fitted, ((size - fitted.width) // 2, (size - fitted.height) // 2))
    return square


# HTML --------------------------------------------------------------------------------------
_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:22px;margin:0 0 6px} h2{font-size:16px;margin:22px 0 8px} h2 small{font-weight:normal;color:#777;margin-left:8px}
p.summary{color:#444;margin:0 0 6px} p.note{color:#965a00;margin:2px 0}
div.grid{display:grid;gap:8px} figure{margin:0} figure img{display:block;object-fit:contain;
 background:#e1e1e1;border:3px solid transparent;image-rendering:pixelated}
figure.smooth img{image-rendering:auto}
div.reference{display:grid;grid-template-columns:72px auto;gap:8px;align-items:center} div.label{font-size:13px} figcaption{font-size:11px;text-align:center;color:#333;overflow:hidden;
 text-overflow:ellipsis;white-space:nowrap} div.histogram svg{max-width:100%;height:auto}
"""


def _sized_style(columns: int, thumb: int) -> str:
    """The rules that depend on the sheet: its grid's columns, the tile size, the frame colours
    (a section's kind frames its tiles; a tile's own kind wins)."""
    cell = thumb + 6
    frames = "".join(f"section.{kind} img{{border-color:{colour}}}" for kind, colour in _CSS_FRAME.items())
    frames += "".join(f"figure.{kind} img{{border-color:{colour}}}" for kind, colour in _CSS_FRAME.items())
    return (f"div.grid{{grid-template-columns:repeat({columns},{cell}px)}} figure{{width:{cell}px}} "
            f"figure img{{width:{thumb}px;height:{thumb}px}}\n{frames}\n")


def render_html(sheet: ContactSheet, images: dict[int, Any], histogram: Any, thumb: int) -> bytes:
    """The sheet as one self-contained UTF-8 HTML page (no external file or network access)."""
    esc = html.escape

    def figure(tile: Tile) -> str:
        image = images[id(tile)]
        caption = tile.caption if image is not None else "unreadable"
        classes = [tile.kind] if tile.kind else []
        if image is not None and max(image.size) > thumb:
            classes.append("smooth")
        attributes = f' class="{" ".join(classes)}"' if classes else ""
        src = _data_uri(image) if image is not None else ""
        where = esc(str(tile.path))
        return (f"<figure{attributes}><img src=\"{src}\" alt=\"{esc(caption)}\" title=\"{where}\">"
                f"<figcaption title=\"{where}\">{esc(caption)}</figcaption></figure>")

    parts = [
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<title>{esc(sheet.title)}</title><style>{_STYLE}{_sized_style(sheet.columns, thumb)}</style></head>",
        "<body>",
        f"<h1>{esc(sheet.title)}</h1><p class=\"summary\">{esc(summary_line(sheet))}</p>",
    ]
    parts += [f"<p class=\"note\">note: {esc(n)}</p>" for n in _notes(sheet, histogram)]
    if histogram is not None:
        parts.append(f"<div class=\"histogram\">{_figure_to_svg(histogram)}</div>")
    if sheet.reference:
        parts.append("<section class=\"positive\">"
                     "<h2>Labeled positives<small>your subset, per class: what the task looks like</small></h2>"
                     "<div class=\"reference\">")
        for group in sheet.reference:
            parts.append(f"<div class=\"label\">class {esc(group.title)}</div><div class=\"grid\">")
            parts += [figure(tile) for tile in group.tiles]
            parts.append("</div>")
        parts.append("</div></section>")
    for group in sheet.groups:
        parts.append(f"<section class=\"{group.kind}\">")
        parts.append(f"<h2>{esc(group.title)}<small>{esc(group.note)}</small></h2><div class=\"grid\">")
        parts += [figure(tile) for tile in group.tiles]
        parts.append("</div></section>")
    parts.append("</body></html>\n")
    return "".join(parts).encode("utf-8", "surrogateescape")


def _data_uri(image: Any) -> str:
    if max(image.size) > _EMBED_MAX:
        image = image.copy()
        image.thumbnail((_EMBED_MAX, _EMBED_MAX))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# Shared ------------------------------------------------------------------------------------
def _decode_tile(tile: Tile) -> Any:
    """The tile's image as a PIL RGB image, or None when it cannot be decoded."""
    from PIL import Image

    try:
        pixels = decode.decode_image_file(Path(tile.path), 3)
    except decode.BadImageError:
        return None
    return Image.fromarray(pixels.permute(1, 2, 0).contiguous().numpy(), mode="RGB")


def _histogram_figure(sheet: ContactSheet) -> Any:
    """The score histogram (kept and rejected stacked, the threshold dashed), or None without
    matplotlib or scores."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    import numpy as np

    if not len(sheet.scores):
        return None
    figure = Figure(figsize=(9, 2.6), dpi=100, layout="constrained")
    axis = figure.subplots()
    scores = sheet.scores
    low, high = np.percentile(scores, [0.1, 99.9]) if len(scores) > 1000 else (scores.min(), scores.max())
    if high <= low:
        low, high = low - 0.5, high + 0.5
    bins = np.linspace(low, high, 61)
    if sheet.threshold is not None and low < sheet.threshold < high:  # a bin edge on the threshold: no bin mixes both sides
        width = (high - low) / 60
        steps = np.arange(np.floor((low - sheet.threshold) / width), np.ceil((high - sheet.threshold) / width) + 1)
        bins = sheet.threshold + width * steps
    clipped = np.clip(scores, low, high)
    kept, rejected = clipped[sheet.kept], clipped[~sheet.kept]
    counts = sheet.counts
    series = [(rejected, "#d62728", f"rejected ({counts['rejected']:,})"), (kept, "#2ca02c", f"kept ({counts['kept']:,})")]
    series = [s for s in series if len(s[0])]
    axis.hist([s[0] for s in series], bins=bins, stacked=True, color=[s[1] for s in series], label=[s[2] for s in series])
    if sheet.threshold is not None:
        axis.axvline(sheet.threshold, color="black", linestyle="--", linewidth=1.2, label=f"threshold {sheet.threshold:.3g}")
    prior = f"class prior {sheet.class_prior:.3g} ({sheet.prior_source or '?'})" if sheet.class_prior is not None else "class prior unknown"
    share = f"; kept share {counts['kept'] / counts['total']:.3f}" if counts["rejected"] else ""
    axis.plot([], [], " ", label=prior + share)  # a legend line for the numbers
    axis.set_xlabel("selector score (scores beyond the 0.1-99.9th percentiles piled at the ends)" if len(scores) > 1000 else "selector score")
    axis.set_ylabel("images")
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    axis.grid(True, alpha=0.3)
    return figure


def _figure_to_image(figure: Any, width: int) -> Any:
    from PIL import Image

    figure.set_size_inches(width / figure.dpi, figure.get_figheight())
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    buffer.seek(0)
    with Image.open(buffer) as image:
        return image.convert("RGB")


def _figure_to_svg(figure: Any) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg")
    text = buffer.getvalue()
    return text[text.index("<svg"):]
