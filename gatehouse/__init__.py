"""Gatehouse: webhooks -> queue -> handlers -> models/access."""

from __future__ import annotations

from typing import Any

from flask import Flask

from gatehouse.config import INSTANCE_DIR, REPO_ROOT, load_settings


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__, instance_path=str(INSTANCE_DIR))
    app.config.update(load_settings(config))
    app.config.setdefault("MIGRATIONS_DIR", REPO_ROOT / "migrations")
    app.json.sort_keys = False  # type: ignore[attr-defined]

    configure_logging(app)
    register_extensions(app)
    register_blueprints(app)
    register_error_handlers(app)
    register_cli(app)
    return app


def configure_logging(app: Flask) -> None:
    from gatehouse.logs import configure

    configure(app.config["GATEHOUSE_LOG_LEVEL"])


def register_extensions(app: Flask) -> None:
    import gatehouse.models  # noqa: F401  (registers every table with the metadata)
    from gatehouse.extensions import init_database, redis_client

    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite:///"):
        INSTANCE_DIR.mkdir(exist_ok=True)
    init_database(app)
    redis_client.init_app(app)


def register_blueprints(app: Flask) -> None:
    from gatehouse.api.admin_members import bp as admin_members
    from gatehouse.api.health import bp as health
    from gatehouse.api.members import bp as members
    from gatehouse.openapi import bp as openapi
    from gatehouse.webhooks.views import bp as webhooks

    app.register_blueprint(webhooks)
    app.register_blueprint(members)
    app.register_blueprint(health)
    app.register_blueprint(admin_members)
    app.register_blueprint(openapi)
    register_operations(app)


def register_operations(app: Flask) -> None:
    """Events API, admin page, metrics, audit log and request logs (issue 5)."""
    from gatehouse import audit, fastpath, metrics, request_log
    from gatehouse.admin import bp as admin
    from gatehouse.api.events import bp as api_events
    from gatehouse.webhooks import fastpath as hook_fastpath

    metrics.init_app(app)
    app.register_blueprint(api_events)
    app.register_blueprint(admin)
    app.register_blueprint(metrics.bp)
    request_log.init_app(app)
    audit.init_app(app)
    # In front of Flask, outermost first: the cached access read, then the accepted webhook.
    hook_fastpath.init_app(app)
    fastpath.init_app(app)


def register_error_handlers(app: Flask) -> None:
    from gatehouse.errors import register_error_handlers as register

    register(app)


def register_cli(app: Flask) -> None:
    from gatehouse.cli import register

    register(app)
