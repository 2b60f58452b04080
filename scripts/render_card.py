"""Render an export's dataset card (README.md) as a page, to look at it as a reader would: the YAML front matter
as the Hub's metadata box, the markdown as HTML (tables, the funnel plot beside it), and a full-page PNG taken with
chromium (Debian's, as the UI test uses: `bash scripts/install_browser.sh`).

    python scripts/render_card.py data/export [--out card.png] [--width 1280]

Writes card.html next to the card (removed again unless --keep-html) and the PNG (default: <export>/../card.png,
outside the export so the export keeps only what it wrote).
"""

from __future__ import annotations

import argparse
import html
import os
import shutil
import sys
from pathlib import Path

CSS = """
body { font: 15px/1.55 -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; color: #1f2328; max-width: 1180px;
       margin: 24px auto; padding: 0 24px; }
h1 { border-bottom: 1px solid #d0d7de; padding-bottom: .3em; } h2 { border-bottom: 1px solid #eaecef; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 12px 0; font-size: 13px; display: block; overflow-x: auto; }
th, td { border: 1px solid #d0d7de; padding: 4px 9px; vertical-align: top; } th { background: #f6f8fa; }
tr:nth-child(2n) td { background: #fbfcfd; } code { background: #eff1f3; padding: 1px 4px; border-radius: 4px; font-size: 85%; }
blockquote { border-left: 4px solid #d0d7de; margin: 0; padding: 4px 14px; color: #57606a; }
img { max-width: 100%; } .meta { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px; padding: 10px 16px;
font-size: 13px; white-space: pre-wrap; font-family: monospace; }
"""


def render_html(card: str) -> str:
    import markdown

    front, body = "", card
    if card.startswith("---\n"):
        end = card.index("\n---", 4)
        front, body = card[4:end], card[end + 4:]
    page = markdown.markdown(body, extensions=["tables", "fenced_code"])
    return (f"<!doctype html><html><head><meta charset='utf-8'><style>{CSS}</style></head><body>"
            f"<div class='meta'>{html.escape(front)}</div>{page}</body></html>")


def chromium() -> str | None:
    for candidate in (os.environ.get("IIMED_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and (shutil.which(candidate) or Path(candidate).exists()):
            return shutil.which(candidate) or candidate
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("export", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--keep-html", action="store_true")
    args = parser.parse_args(argv)
    card = (args.export / "README.md").read_text(encoding="utf-8")
    page = args.export / "card.html"
    page.write_text(render_html(card), encoding="utf-8")
    out = args.out or args.export.parent / "card.png"
    browser = chromium()
    if browser is None:
        print(f"no chromium: wrote {page} only (bash scripts/install_browser.sh)", file=sys.stderr)
        return 1
    from playwright.sync_api import sync_playwright

    try:
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=browser, args=["--no-sandbox"])
            tab = b.new_page(viewport={"width": args.width, "height": 900})
            tab.goto(page.resolve().as_uri())
            tab.wait_for_load_state("load")
            tab.screenshot(path=str(out), full_page=True)
            b.close()
    finally:
        if not args.keep_html:
            page.unlink()
    print(f"rendered {args.export / 'README.md'} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
