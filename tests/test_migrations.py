"""The Alembic migrations build exactly the schema the models describe."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import upgrade
from sqlalchemy import create_engine

from gatehouse.extensions import db
from gatehouse.models import Base
from tests.conftest import make_app


def test_upgrade_matches_models(tmp_path: Path, redis_server: object) -> None:
    url = f"sqlite:///{tmp_path / 'migrated.db'}"
    app = make_app(url, "redis://127.0.0.1:1/0")
    with app.app_context():
        upgrade()
        db.engine.dispose()
    engine = create_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        # Alembic cannot compare expression indexes on SQLite: check this one by name.
        indexes = set(
            conn.exec_driver_sql(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'members'"
            ).scalars()
        )
    engine.dispose()
    assert diff == []
    assert "ix_members_email_lower" in indexes and "ix_members_email" not in indexes
