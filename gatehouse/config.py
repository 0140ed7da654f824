"""Settings from the environment only; a missing secret fails at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from environs import Env

REPO_ROOT = Path(__file__).resolve().parent.parent
INSTANCE_DIR = REPO_ROOT / "instance"
DEFAULT_RETRY_INTERVALS = [10, 60, 300, 1800]


class ConfigError(RuntimeError):
    """A setting is missing or wrong; the message says which and how to fix it."""


def _intervals(raw: str) -> list[int]:
    try:
        values = [int(part) for part in raw.split(",") if part.strip()]
    except ValueError as exc:
        raise ConfigError(
            f"GATEHOUSE_RETRY_INTERVALS={raw!r} is not a comma-separated list of seconds, "
            "e.g. 10,60,300,1800"
        ) from exc
    if any(v < 0 for v in values):
        raise ConfigError("GATEHOUSE_RETRY_INTERVALS must not contain negative seconds")
    return values


def load_settings(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read every setting from the environment (and `.env`), applying `overrides` last.

    `overrides` exists for tests and tools that build an app for a specific database.
    """
    env = Env()
    env.read_env(str(REPO_ROOT / ".env"), override=False)
    overrides = dict(overrides or {})

    def pick(name: str, reader: Any, *args: Any, **kwargs: Any) -> Any:
        if name in overrides:
            return overrides.pop(name)
        return reader(name, *args, **kwargs)

    settings: dict[str, Any] = {
        "SQLALCHEMY_DATABASE_URI": pick(
            "DATABASE_URL", env.str, f"sqlite:///{INSTANCE_DIR / 'gatehouse.db'}"
        ),
        "REDIS_URL": pick("REDIS_URL", env.str, "redis://127.0.0.1:6379/0"),
        "SECRET_KEY": pick("SECRET_KEY", env.str, None),
        "GATEHOUSE_PUBLIC_URL": pick("GATEHOUSE_PUBLIC_URL", env.str, None),
        "GATEHOUSE_MAX_BODY": pick("GATEHOUSE_MAX_BODY", env.int, 1_048_576),
        "GATEHOUSE_SIGNATURE_TOLERANCE": pick("GATEHOUSE_SIGNATURE_TOLERANCE", env.int, 300),
        "GATEHOUSE_RETRY_INTERVALS": pick(
            "GATEHOUSE_RETRY_INTERVALS", env.str, ",".join(map(str, DEFAULT_RETRY_INTERVALS))
        ),
        "GATEHOUSE_QUEUE": pick("GATEHOUSE_QUEUE", env.str, "gatehouse"),
        "GATEHOUSE_JOB_TIMEOUT": pick("GATEHOUSE_JOB_TIMEOUT", env.int, 60),
        "GATEHOUSE_SWEEP_INTERVAL": pick("GATEHOUSE_SWEEP_INTERVAL", env.int, 15),
        "GATEHOUSE_SWEEP_GRACE": pick("GATEHOUSE_SWEEP_GRACE", env.int, 30),
        "GATEHOUSE_LOG_LEVEL": pick("GATEHOUSE_LOG_LEVEL", env.str, "WARNING"),
        "KEAP_API_BASE_URL": pick(
            "KEAP_API_BASE_URL", env.str, "https://api.infusionsoft.com/crm/rest/v1"
        ),
        "KEAP_API_TOKEN": pick("KEAP_API_TOKEN", env.str, None),
    }
    if isinstance(settings["GATEHOUSE_RETRY_INTERVALS"], str):
        settings["GATEHOUSE_RETRY_INTERVALS"] = _intervals(settings["GATEHOUSE_RETRY_INTERVALS"])
    settings.update(overrides)

    if not settings["SECRET_KEY"]:
        raise ConfigError(
            "SECRET_KEY is not set. Put a long random value in the environment or in .env "
            "(`make run` writes one for local use), e.g. "
            "SECRET_KEY=$(python -c 'import secrets; print(secrets.token_urlsafe(48))')"
        )
    if len(settings["SECRET_KEY"]) < 16:
        raise ConfigError("SECRET_KEY is too short: use at least 16 random characters")
    if settings["GATEHOUSE_PUBLIC_URL"]:
        settings["GATEHOUSE_PUBLIC_URL"] = settings["GATEHOUSE_PUBLIC_URL"].rstrip("/")
    settings["MAX_CONTENT_LENGTH"] = None  # our own limit answers 413 as JSON
    settings["SQLALCHEMY_TRACK_MODIFICATIONS"] = False
    return settings
