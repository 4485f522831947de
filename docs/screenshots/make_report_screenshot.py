"""Make docs/screenshots/report.png from a *real* audit report (e.g. `kdaudit demo`'s report-nasty.json).

    python docs/screenshots/make_report_screenshot.py kdaudit-demo/report-nasty.json [out.png]

The page is the one the web UI shows in its report frame (reporting/html_page.py), rendered
from the report JSON and photographed with Playwright driving the system Chromium (as
tests/test_browser_ui.py does; `apt-get install chromium`, never `playwright install`). The
browser test's own screenshots come from a random teacher and stay in artifacts/.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]


def main(argv: list[str]) -> int:
    from playwright.sync_api import sync_playwright

    from kdaudit.reporting.html_page import render_report_html

    src = Path(argv[0])
    out = Path(argv[1]) if len(argv) > 1 else HERE / "report.png"
    page_html = render_report_html(json.loads(src.read_text()))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "report.html"
        path.write_text(page_html)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(path.as_uri())
            page.locator("#verdict").wait_for()
            page.screenshot(path=str(out), full_page=False)
            browser.close()
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
