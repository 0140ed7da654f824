"""JSON errors for every HTTP failure: a stable code, a useful message, never a stack trace."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify
from sqlalchemy.exc import SQLAlchemyError
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


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> tuple[Response, int]:
        status = exc.code or 500
        return jsonify({"error": CODES.get(status, "error"), "detail": exc.description}), status

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
