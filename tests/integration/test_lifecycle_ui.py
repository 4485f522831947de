"""The web UI's delete buttons in a real browser (Playwright + Debian's Chromium, the fixtures of
test_browser_ui.py): deleting a teacher asks for confirmation; dismissing keeps it, accepting
removes it from the list and from the server."""

from __future__ import annotations

import httpx

from tests.integration.test_browser_ui import _sign_in, _upload, browser, page, server  # noqa: E402, F401 (fixtures)


def test_delete_teacher_button_asks_first(server, page):  # noqa: F811
    pg = page
    _sign_in(pg, server)
    _upload(pg, server)
    pg.locator("#upload-result").wait_for(state="visible")
    pg.wait_for_function("document.querySelector('#audit-teacher').value !== ''")  # the list reloads after
    select = pg.locator("#audit-teacher")
    teacher_id = select.input_value()
    assert teacher_id
    asked: list[str] = []

    def answer(accept: bool):
        def handler(dialog) -> None:
            asked.append(dialog.message)
            dialog.accept() if accept else dialog.dismiss()

        return handler

    pg.once("dialog", answer(False))
    pg.get_by_role("button", name="Delete the chosen teacher").click()
    pg.wait_for_timeout(300)
    assert len(asked) == 1 and "cannot be undone" in asked[0]
    auth = {"Authorization": f"Bearer {server['key']}"}
    assert httpx.get(f"{server['url']}/v1/teachers/{teacher_id}", headers=auth).status_code == 200  # dismissed: kept

    pg.once("dialog", answer(True))
    pg.get_by_role("button", name="Delete the chosen teacher").click()
    pg.locator("#flash").wait_for(state="visible")
    assert "deleted" in pg.locator("#flash").inner_text()
    assert len(asked) == 2
    assert httpx.get(f"{server['url']}/v1/teachers/{teacher_id}", headers=auth).status_code == 404
    assert teacher_id not in [o.get_attribute("value") for o in select.locator("option").all()]
