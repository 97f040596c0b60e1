"""Screenshot a Snakemake report in a headless browser: open a category, a subcategory
and its first file, and save the page as a PNG (docs/report_training.png in the README).

    python tools/report_screenshot.py results/demo/report.html docs/report_training.png \\
        --category "3. Training" --subcategory cam

Needs Playwright (``pip install playwright``) and a Chromium: Debian's
(``apt-get install chromium``, /usr/bin/chromium) or Playwright's own (``--browser ''``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# The flags of a headless Chromium on a machine without a network or a display.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="report.html written by snakemake --report")
    parser.add_argument("out", type=Path, help="PNG to write")
    parser.add_argument("--category", default="3. Training")
    parser.add_argument("--subcategory", default="cam")
    parser.add_argument("--browser", default="/usr/bin/chromium", help="Chromium executable")
    parser.add_argument("--size", type=int, nargs=2, default=(1400, 820), metavar=("W", "H"))
    args = parser.parse_args()
    if not args.report.is_file():
        parser.error(f"{args.report}: no such report (make demo writes results/demo/report.html)")

    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=args.browser or None, args=CHROMIUM_ARGS
        )
        page = browser.new_page(viewport={"width": args.size[0], "height": args.size[1]})
        page.goto(args.report.resolve().as_uri())
        page.get_by_text(args.category, exact=True).click()
        page.get_by_text(args.subcategory, exact=True).first.click()
        page.locator("a[iconname=eye]").first.click()
        page.wait_for_timeout(1500)  # the image is decoded and laid out
        args.out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.out))
        browser.close()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
