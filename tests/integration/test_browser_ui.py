"""The web UI in a real browser: Playwright (Python) driving Debian's Chromium against a real
embedded server (uvicorn in a thread, SQLite + filesystem broker, a Celery worker process).

Sign in with an API key, upload a demo teacher, start an audit (1 seed x 2 epochs), watch it
finish in the list, open the report, check the verdict and the plots; a failing upload and a
wrong key show the API's message in the page; the pages fit a 390 px wide screen.

Needs `apt-get install chromium` and `pip install playwright` (never `playwright install`:
we launch the system browser). Without them the tests skip, unless CI=true.
Screenshots go to $KDAUDIT_TEST_ARTIFACTS (default artifacts/browser/); with
KDAUDIT_UPDATE_SCREENSHOTS=1 the audit list screenshot is also copied to docs/screenshots/ (the report
screenshot there is of a real audit of trained teachers: docs/screenshots/make_report_screenshot.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.helpers import service as h  # noqa: E402
from tests.helpers.paths import REPO_ROOT

REPO = REPO_ROOT
CHROMIUM = os.environ.get("KDAUDIT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
ARTIFACTS = Path(os.environ.get("KDAUDIT_TEST_ARTIFACTS", REPO / "artifacts" / "browser"))
SCREENSHOTS = REPO / "docs" / "screenshots"
STUDENT = "cnn-4-8-8-16"
#: console noise Chromium prints for every 4xx fetch; the pages show those errors themselves
_EXPECTED_CONSOLE = re.compile(r"Failed to load resource: the server responded with a status of (401|404|409|413|422)")


def _need_browser() -> None:
    def check() -> None:
        import playwright.sync_api  # noqa: F401

        if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
            raise FileNotFoundError(f"{CHROMIUM} (apt-get install chromium)")

    h.require("Playwright with Debian's Chromium", check)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    _need_browser()
    import uvicorn

    from kdaudit.service import web
    from kdaudit.service.app import create_app
    from kdaudit.store.settings import ServiceSettings

    root = tmp_path_factory.mktemp("browser")
    settings = ServiceSettings(
        data_dir=root / "data", database_url=None, broker_url=None, storage_dir=None, auto_migrate=True,
        queue=f"kdaudit-browser-{uuid.uuid4().hex[:8]}", heartbeat_seconds=1.0,
    )  # fmt: skip
    key = h.new_key(settings, "browser")  # also migrates the database
    worker = h.start_worker(settings, root / "worker.log")  # starts while the API comes up
    app = create_app(settings)
    if not any(getattr(r, "path", None) == "/v1/audits/{audit_id}/report.html" for r in app.routes):
        app.include_router(web.router)  # until app.py includes it itself
    port = h.free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=srv.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not srv.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        teacher = h.make_trained_teacher_file(root / "demo-teacher.safetensors", arch=h.TEACHER_ARCH)
        yield {"url": f"http://127.0.0.1:{port}", "key": key, "root": root, "teacher": teacher,
               "worker_log": root / "worker.log"}  # fmt: skip
    finally:
        srv.should_exit = True
        thread.join(15)
        h.stop_worker(worker)


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, request):
    """A fresh page at 1280 px; console errors and uncaught exceptions fail the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    problems: list[str] = []
    pg.on("console", lambda m: m.type == "error" and not _EXPECTED_CONSOLE.search(m.text) and problems.append(m.text))
    pg.on("pageerror", lambda e: problems.append(f"uncaught: {e}"))
    pg.set_default_timeout(20_000)
    yield pg
    context.close()
    assert problems == [], problems


def _artifact(name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / name


def _sign_in(pg, server, key: str | None = None) -> None:
    pg.goto(server["url"] + "/")
    pg.get_by_label("API key", exact=True).fill(key or server["key"])
    pg.get_by_role("button", name="Sign in").click()
    pg.locator("#app").wait_for(state="visible")


def _upload(pg, server) -> None:
    pg.get_by_label("Checkpoint file", exact=True).set_input_files(str(server["teacher"]))
    pg.get_by_label("Architecture", exact=True).fill(h.TEACHER_ARCH)
    pg.get_by_label("Dataset", exact=True).select_option("digits")
    pg.get_by_role("button", name="Upload").click()


def _fits(pg, width: int) -> None:
    scroll = pg.evaluate("document.documentElement.scrollWidth")
    assert scroll <= width, f"horizontal overflow at {width}px: content is {scroll}px wide"


def test_sign_in_upload_audit_and_read_the_report(server, page, browser):
    pg = page
    started = time.monotonic()
    _sign_in(pg, server)
    assert pg.evaluate("sessionStorage.getItem('kdaudit.apiKey')") == server["key"]

    _upload(pg, server)
    result = pg.locator("#upload-result")
    result.wait_for(state="visible")
    assert "Uploaded teacher" in result.inner_text()
    teacher_id = pg.locator("#audit-teacher").input_value()
    assert teacher_id and teacher_id in result.inner_text()

    pg.get_by_label("Student architectures", exact=True).fill(STUDENT)
    pg.get_by_role("region", name="Start an audit").get_by_label("Seeds", exact=True).fill("1")
    pg.get_by_role("region", name="Start an audit").get_by_label("Epochs", exact=True).fill("2")
    pg.get_by_label("Data fraction", exact=True).fill("0.3")
    pg.get_by_label("Device", exact=True).select_option("cpu")
    pg.get_by_label("What the thief sees", exact=True).select_option("label")
    pg.get_by_label("Query budget per run", exact=True).fill("100000")
    pg.get_by_role("button", name="Start audit").click()
    flash = pg.locator("#flash")
    flash.wait_for(state="visible")
    audit_id = re.search(r"Audit (\S+) queued", flash.inner_text()).group(1)

    # live status: watch the list until the audit has finished (the page polls the API)
    item = pg.locator(f'li.audit[data-audit-id="{audit_id}"]')
    item.wait_for()
    seen, progress = set(), set()
    deadline = time.monotonic() + 150
    while True:
        status = item.get_attribute("data-status")
        seen.add(status)
        progress.add(item.locator(".progress-text").inner_text())
        if status in ("succeeded", "failed", "cancelled"):
            break
        assert time.monotonic() < deadline, (seen, server["worker_log"].read_text()[-3000:])
        time.sleep(0.25)
    assert status == "succeeded", (item.inner_text(), server["worker_log"].read_text()[-3000:])
    assert "4/4 runs" in item.inner_text() and len(progress) >= 2, progress  # it moved while we watched
    assert "thief sees label" in item.inner_text() and "budget 100000 queries/run" in item.inner_text()
    pg.screenshot(path=_artifact("audits.png"), full_page=True)

    # the report, through the UI page (fetched with the key, shown in a sandboxed frame)
    with pg.expect_navigation():
        item.get_by_role("link", name="Open report").click()
    assert pg.url.endswith(f"/audits/{audit_id}/report")
    frame = pg.frame_locator("#report-frame")
    verdict = frame.locator("#verdict")
    verdict.wait_for()
    doc = httpx.get(f"{server['url']}/v1/audits/{audit_id}/report", headers=h.auth(server["key"])).json()
    assert doc["threat"]["output"] == "label" and doc["threat"]["query_budget"] == 100000
    word = doc["summary"]["verdict"]
    text = verdict.inner_text()
    assert word.upper() in text and STUDENT in text and verdict.get_attribute("data-verdict") == word
    from kdaudit.distill.report import Report
    from kdaudit.reporting.verdict_html import verdict_sentence

    assert verdict_sentence(Report.model_validate(doc)) in text
    # accuracy, learning curves, and leakage vs queries (the label-only KD runs' budget curves)
    assert frame.locator("svg.plot").count() == 3
    assert frame.get_by_role("heading", name="Leakage vs query budget").count() == 1
    assert frame.locator("svg.plot").first.bounding_box()["width"] > 300  # drawn, not collapsed
    assert frame.get_by_role("heading", name=re.compile("Student")).count() == 1
    assert frame.locator('tr[data-kind="skeptical"] td').count() >= 4
    assert pg.locator("#download").get_attribute("href").startswith("blob:")
    pg.screenshot(path=_artifact("report-in-ui.png"), full_page=True)

    # the same report as a stand-alone page (GET /v1/audits/{id}/report.html with the key)
    ctx = browser.new_context(viewport={"width": 1280, "height": 900}, extra_http_headers=h.auth(server["key"]))
    try:
        standalone = ctx.new_page()
        resp = standalone.goto(f"{server['url']}/v1/audits/{audit_id}/report.html")
        assert resp.status == 200 and resp.headers["content-type"].startswith("text/html")
        assert standalone.locator("svg.plot").count() == 3
        shot = _artifact("report.png")
        standalone.screenshot(path=shot, full_page=True)
        if os.environ.get("KDAUDIT_UPDATE_SCREENSHOTS") == "1":  # the list page only: this audit's teacher is random,
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)  # docs/screenshots/report.png comes from a real audit
            shutil.copyfile(_artifact("audits.png"), SCREENSHOTS / "audits.png")  # (docs/screenshots/make_report_screenshot.py)
    finally:
        ctx.close()
    (ARTIFACTS / "audit.json").write_text(json.dumps({"audit": audit_id, "seconds": round(time.monotonic() - started, 1)}))

    # 390 px: the same pages, no sideways scrolling
    pg.set_viewport_size({"width": 390, "height": 844})
    pg.reload()
    pg.frame_locator("#report-frame").locator("#verdict").wait_for()
    _fits(pg, 390)
    pg.goto(server["url"] + "/")
    pg.locator(f'li.audit[data-audit-id="{audit_id}"]').wait_for()
    _fits(pg, 390)
    pg.screenshot(path=_artifact("audits-390.png"), full_page=True)


def test_failed_upload_shows_the_api_error(server, page):
    pg = page
    _sign_in(pg, server)
    pg.get_by_label("Checkpoint file", exact=True).set_input_files(
        {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"this is not a checkpoint\n"}
    )
    pg.get_by_label("Architecture", exact=True).fill(h.TEACHER_ARCH)
    pg.get_by_role("button", name="Upload").click()
    error = pg.locator("#upload-error")
    error.wait_for(state="visible")
    text = error.inner_text()
    assert text.startswith("Upload rejected:") and len(text) > len("Upload rejected: ") + 10, text
    assert "{" not in text and "urn:kdaudit" not in text  # a message, not the raw problem document
    assert pg.locator("#upload-result").is_hidden()
    pg.screenshot(path=_artifact("upload-error.png"))

    # a bad architecture name is a readable validation message too
    _upload(pg, server)
    pg.locator("#upload-result").wait_for(state="visible")
    pg.get_by_label("Checkpoint file", exact=True).set_input_files(str(server["teacher"]))
    pg.get_by_label("Architecture", exact=True).fill("no-such-net")
    pg.get_by_role("button", name="Upload").click()
    pg.locator("#upload-error").wait_for(state="visible")
    assert "no-such-net" in pg.locator("#upload-error").inner_text()


def test_wrong_key_and_a_bad_audit_request_show_messages(server, page):
    pg = page
    pg.goto(server["url"] + "/")
    pg.get_by_label("API key", exact=True).fill("kda_not-a-real-key")
    pg.get_by_role("button", name="Sign in").click()
    err = pg.locator("#signin-error")
    err.wait_for(state="visible")
    assert "not valid" in err.inner_text() and pg.locator("#app").is_hidden()

    _sign_in(pg, server)
    pg.locator("#audit-teacher option").first.wait_for(state="attached")
    pg.get_by_label("Query budget per run", exact=True).fill("0")
    pg.get_by_role("button", name="Start audit").click()
    err = pg.locator("#audit-error")
    err.wait_for(state="visible")
    assert "positive whole number" in err.inner_text()
    pg.get_by_label("Query budget per run", exact=True).fill("")
    pg.get_by_label("Student architectures", exact=True).fill("not-an-arch")
    pg.get_by_role("region", name="Start an audit").get_by_label("Seeds", exact=True).fill("1")
    pg.get_by_role("button", name="Start audit").click()
    err = pg.locator("#audit-error")
    err.wait_for(state="visible")
    assert err.inner_text().strip(), "empty error message"
    assert "not-an-arch" in err.inner_text() or "upload a teacher" in err.inner_text().lower()

    # the report page of an unknown audit says so
    pg.goto(server["url"] + "/audits/no-such-audit/report")
    pg.locator("#report-error").wait_for(state="visible")
    assert "no audit" in pg.locator("#report-error").inner_text()
