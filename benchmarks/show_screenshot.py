"""Open a ``pucli show`` HTML sheet in headless Chromium and save what the browser drew.

Checks that the self-contained page renders in a real browser, offline: the thumbnails are
``data:`` URIs and the histogram inline SVG, so Chromium is started with networking features off
(no QUIC, no background networking, no component updates, no sync) and a fresh profile folder.
Chromium comes from Debian's packages (``apt-get install chromium``).

Usage::

    python benchmarks/show_screenshot.py SHEET.html --out screenshot.png [--width 1000] [--height 2400]
    python benchmarks/show_screenshot.py INDEX.tsv --positive DIR --out screenshot.png   (draws the sheet first)

Prints the screenshot's path on stdout.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_chromium() -> str | None:
    """The first Chromium-like browser on PATH (``$CHROMIUM`` wins), or None."""
    override = os.environ.get("CHROMIUM")
    if override:
        return override
    return next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)


def screenshot(page: Path, out: Path, *, width: int = 1000, height: int = 2400, timeout_s: float = 120.0) -> Path:
    """Render ``page`` (a local HTML file) in headless Chromium and write a ``width`` x ``height``
    PNG screenshot to ``out``.

    Raises:
        FileNotFoundError: no Chromium on PATH.
        RuntimeError: Chromium failed or wrote no screenshot (its stderr's tail is in the message).
    """
    browser = find_chromium()
    if browser is None:
        raise FileNotFoundError("no chromium on PATH: apt-get install chromium (or set $CHROMIUM)")
    with tempfile.TemporaryDirectory(prefix="pucli-chromium-") as profile:
        command = [
            browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--hide-scrollbars", "--force-device-scale-factor=1",
            f"--window-size={width},{height}", f"--screenshot={out.resolve()}", page.resolve().as_uri(),
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    if done.returncode != 0 or not out.is_file():
        raise RuntimeError(f"chromium exited {done.returncode}: {done.stderr.strip()[-400:]}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="an HTML sheet, or an index / expanded set to draw one from")
    parser.add_argument("--out", type=Path, required=True, help="screenshot PNG to write")
    parser.add_argument("--positive", type=Path, default=None, help="labeled positives, when SOURCE is an index")
    parser.add_argument("--width", type=int, default=1000)
    parser.add_argument("--height", type=int, default=2400)
    args = parser.parse_args(argv)
    page = args.source
    with tempfile.TemporaryDirectory(prefix="pucli-sheet-") as work:
        if page.suffix.lower() not in (".html", ".htm"):
            from pucli.show.render import write_sheet
            from pucli.show.sampling import sheet_from_source

            page = Path(work) / "sheet.html"
            write_sheet(sheet_from_source(args.source, positive=args.positive), page)
        print(screenshot(page, args.out, width=args.width, height=args.height))
    return 0


if __name__ == "__main__":
    sys.exit(main())
