"""The admin page in a real headless Chromium: log in, find the failed event, preview, replay.

The app is served by a real werkzeug server on 127.0.0.1 (in a thread) and events are run by
a real `flask worker` process. The event fails first (a handler bug), then the "fixed"
worker runs the replay.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.serving import make_server

from gatehouse.extensions import db
from tests.conftest import free_port
from tests.helpers import app_process_env, create_token, repo_python
from tests.ops.scenario import failed_tag_event, setup_member

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason=f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does it)",
)


@pytest.fixture
def served(app: Flask) -> Iterator[str]:
    port = free_port()
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    server.shutdown()
    thread.join(10)


@pytest.fixture
def worker_process(app: Flask) -> Iterator[subprocess.Popen[bytes]]:
    env = app_process_env(app, GATEHOUSE_SWEEP_INTERVAL="2")
    proc = repo_python("-m", "flask", "--app", "wsgi", "worker", env=env)
    yield proc
    proc.terminate()
    proc.wait(20)


def test_admin_finds_previews_and_replays_a_failed_event_in_a_browser(
    app: Flask,
    client: FlaskClient,
    served: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    from playwright.sync_api import expect, sync_playwright

    secrets = setup_member(app, client)
    event_id = failed_tag_event(app, client, secrets["std_secret"], "205", "m1")
    admin = create_token("admin", "browser-admin")
    db.session.rollback()  # the server and the worker write to this SQLite file too
    request.getfixturevalue("worker_process")

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page()
        page.set_default_timeout(15_000)

        page.goto(f"{served}/admin/")
        page.get_by_label("Admin token").fill(admin)
        page.get_by_role("button", name="Log in").click()
        expect(page.get_by_text("signed in as browser-admin")).to_be_visible()
        page.screenshot(path=str(tmp_path / "1-logged-in.png"))

        page.get_by_label("Status").select_option("failed")
        page.get_by_role("button", name="Filter", exact=True).click()
        rows = page.locator("#events tbody tr")
        expect(rows).to_have_count(1)
        expect(rows.first).to_contain_text("HandlerBug")
        page.screenshot(path=str(tmp_path / "2-failed-events.png"))

        rows.first.get_by_role("link").click()
        expect(page.locator("#event-status")).to_have_text("failed")
        page.get_by_role("button", name="Preview replay", exact=True).click()
        preview = page.locator("#preview")
        expect(preview).to_contain_text("section:community")
        expect(preview).to_contain_text("Nothing has been changed yet")
        page.screenshot(path=str(tmp_path / "3-preview.png"))

        page.get_by_role("button", name="Replay now").click()
        expect(page.get_by_role("status")).to_contain_text("Replay queued")
        deadline = time.monotonic() + 30
        while page.locator("#event-status").inner_text() != "processed":
            assert time.monotonic() < deadline, "the worker did not process the replay"
            time.sleep(0.5)
            page.reload()
        page.screenshot(path=str(tmp_path / "4-processed.png"))

        page.get_by_role("link", name="keap:2729").click()
        expect(page.locator(".permissions")).to_contain_text("section:community")
        page.screenshot(path=str(tmp_path / "5-member-access.png"))

        page.get_by_role("link", name="Audit log").click()
        expect(page.locator("#audit")).to_contain_text("event.replay")
        expect(page.locator("#audit")).to_contain_text(event_id)
        page.screenshot(path=str(tmp_path / "6-audit.png"))
        browser.close()

    assert sorted(f.name for f in tmp_path.glob("*.png")) == [
        "1-logged-in.png",
        "2-failed-events.png",
        "3-preview.png",
        "4-processed.png",
        "5-member-access.png",
        "6-audit.png",
    ]
