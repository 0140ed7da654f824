"""The chaos run, small: real processes, one worker SIGKILL, one Redis restart that loses its
data, one gunicorn SIGKILL, every source kind; every accepted event must take effect once, as
the oracle says.

It starts its own redis-server, gunicorn, workers and a fake Keap API (not the session's
Redis): the point is to crash them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import chaos
from gatehouse.webhooks.senders import SENDERS


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_small_chaos_run_loses_nothing_and_matches_the_oracle(tmp_path: Path) -> None:
    output = tmp_path / "chaos.json"
    status = chaos.main(
        [
            "--events",
            "1000",
            "--members",
            "200",
            "--kills",
            "1",
            "--seed",
            "20261122",
            "--drain-timeout",
            "150",
            "--output",
            str(output),
        ]
    )
    report = json.loads(output.read_text())
    assert report["kinds_without_generator"] == []
    assert set(report["event_kinds"]) == set(SENDERS), report["event_kinds"]
    assert report["worker_kills"] == 1
    assert report["redis_restarts"] == 1 and report["gunicorn_restarts"] == 1
    assert report["posted"] >= 1000
    assert report["accepted"] == report["posted"], report["refused"]
    assert report["lost"] == 0, report["lost_events"]
    assert report["doubled_effects"] == 0, report["doubled_detail"]
    assert report["mismatched_payloads"] == 0, report["mismatched_detail"]
    assert report["planned_not_stored"] == 0, report["planned_not_stored_detail"]
    assert report["subscriptions"] > 0 and report["keap_api_requests"] > 0
    assert report["divergent"] == 0, report["divergent_members"]
    assert status == 0
