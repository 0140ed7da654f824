"""The baseline: hello-world Flask views, served by the same gunicorn settings as the app."""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify, request

app = Flask(__name__)


@app.get("/healthz")
def healthz() -> Any:
    return jsonify({"status": "ok"})


@app.post("/hooks/<slug>")
def hook(slug: str) -> Any:
    request.get_data()  # read the body as the real view must
    return jsonify({"status": "accepted", "events": ["0" * 26]}), 202


@app.get("/api/members/<member_id>/access")
def access(member_id: str) -> Any:
    return jsonify({"member_id": member_id, "status": "active", "permissions": []})


def noop() -> None:
    """The job stock `rq worker` drains for the processing baseline."""
