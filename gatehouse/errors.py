"""JSON errors for every HTTP failure: a stable code, a useful message, never a stack trace."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify
from sqlalchemy.exc import DataError, SQLAlchemyError
from werkzeug.exceptions import HTTPException

log = logging.getLogger("gatehouse")

CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
}


def json_error(status: int, code: str, detail: str) -> tuple[Response, int]:
    """The answer a view gives for a refusal it names itself: the same shape as the
    handlers below (`{"error": code, "detail": detail}`)."""
    return jsonify({"error": code, "detail": detail}), status


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> tuple[Response, int]:
        status = exc.code or 500
        return jsonify({"error": CODES.get(status, "error"), "detail": exc.description}), status

    @app.errorhandler(DataError)
    def _bad_value(exc: DataError) -> tuple[Response, int]:
        # The database refused a value the client sent (a NUL in text, an integer past its
        # column's range): the request is wrong, the database is fine; retrying cannot help.
        log.info("request.value_refused_by_database", extra={"error": type(exc.orig).__name__})
        detail = "a value in the request cannot be used (a NUL character, a number out of range)"
        return jsonify({"error": "bad_request", "detail": detail}), 400

    @app.errorhandler(SQLAlchemyError)
    def _database(exc: SQLAlchemyError) -> tuple[Response, int, dict[str, str]]:
        log.warning("request.database_unavailable", exc_info=True)
        return (
            jsonify({"error": "unavailable", "detail": "the database did not answer; retry"}),
            503,
            {"Retry-After": "30"},
        )

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> tuple[Response, int]:
        log.exception("request.unhandled_error")
        return jsonify(
            {"error": "internal_error", "detail": "unexpected error; it was logged"}
        ), 500
