"""flask events list | show | replay [--dry-run]."""

from __future__ import annotations

import json

from flask import Flask
from flask.testing import FlaskClient

from gatehouse.extensions import db
from gatehouse.models import Event, Replay
from tests.helpers import run_worker
from tests.ops.scenario import failed_tag_event, setup_member


def cli(app: Flask, *args: str) -> tuple[int, str]:
    result = app.test_cli_runner().invoke(args=["events", *args])
    return result.exit_code, result.output


def test_list_and_show(app: Flask, client: FlaskClient) -> None:
    secrets = setup_member(app, client)
    event_id = failed_tag_event(app, client, secrets["std_secret"], "205", "m1")
    code, out = cli(app, "list", "--status", "failed")
    assert code == 0 and event_id in out and "HandlerBug" in out
    code, out = cli(app, "list", "--status", "failed", "--json")
    assert [e["id"] for e in json.loads(out)["events"]] == [event_id]
    code, out = cli(app, "show", event_id)
    shown = json.loads(out)
    assert shown["payload"]["tag"] == "205" and "HandlerBug" in shown["attempt_log"][0]["error"]


def test_bad_input_says_what_to_fix(app: Flask) -> None:
    code, out = cli(app, "show", "nope")
    assert code != 0 and "No event nope" in out and "events list" in out
    code, out = cli(app, "list", "--since", "yesterday")
    assert code != 0 and "ISO 8601" in out
    code, out = cli(app, "replay")
    assert code != 0 and "--status failed" in out


def test_dry_run_changes_nothing_then_replay_fixes(app: Flask, client: FlaskClient) -> None:
    secrets = setup_member(app, client)
    event_id = failed_tag_event(app, client, secrets["std_secret"], "205", "m1")
    code, out = cli(app, "replay", "--status", "failed", "--dry-run")
    assert code == 0, out
    answer = json.loads(out)
    assert answer["matched"] == 1 and answer["changes"][0]["added"] == ["section:community"]
    db.session.expire_all()
    assert db.session.get(Event, event_id).status == "failed"  # type: ignore[union-attr]
    assert db.session.query(Replay).count() == 0

    code, out = cli(app, "replay", "--status", "failed")
    assert code == 0 and "1 event(s) matched" in out
    run_worker(app)
    db.session.expire_all()
    assert db.session.get(Event, event_id).status == "processed"  # type: ignore[union-attr]


def test_replay_one_event(app: Flask, client: FlaskClient) -> None:
    secrets = setup_member(app, client)
    event_id = failed_tag_event(app, client, secrets["std_secret"], "205", "m1")
    code, out = cli(app, "replay", event_id, "--dry-run")
    assert code == 0 and json.loads(out)["changes"][0]["added"] == ["section:community"]
    code, out = cli(app, "replay", event_id)
    assert code == 0 and "Queued" in out
    run_worker(app)
    db.session.expire_all()
    assert db.session.get(Event, event_id).status == "processed"  # type: ignore[union-attr]
