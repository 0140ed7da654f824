"""The webhook view reads headers straight from the WSGI environ, as werkzeug would."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from werkzeug.datastructures import EnvironHeaders
from werkzeug.wrappers import Request

from gatehouse.webhooks.views import environ_headers, inbound_from, inbound_from_environ


def test_environ_headers_are_werkzeugs_headers_lower_cased() -> None:
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/hooks/x",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": "",  # empty: not a header
        "HTTP_CONTENT_TYPE": "text/plain",  # never read: CONTENT_TYPE is the header
        "HTTP_WEBHOOK_ID": "msg_1",
        "HTTP_X_HUBSPOT_SIGNATURE_V3": "abc=",
        "HTTP_USER_AGENT": "Keap/1.0",
        "wsgi.input": None,
    }
    expected = {k.lower(): v for k, v in EnvironHeaders(environ).items()}
    assert environ_headers(environ) == expected
    assert expected == {
        "content-type": "application/json",
        "webhook-id": "msg_1",
        "x-hubspot-signature-v3": "abc=",
        "user-agent": "Keap/1.0",
    }


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "Application/JSON; charset=UTF-8",
        "application/x-www-form-urlencoded",
        "",
        None,
    ],
)
def test_inbound_from_the_environ_is_what_the_request_gives(content_type: str | None) -> None:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "post",
        "PATH_INFO": "/hooks/x",
        "QUERY_STRING": "",
        "SERVER_NAME": "gatehouse.test",
        "SERVER_PORT": "443",
        "wsgi.url_scheme": "https",
        "HTTP_WEBHOOK_ID": "msg_1",
        "wsgi.input": None,
    }
    if content_type is not None:
        environ["CONTENT_TYPE"] = content_type

    lean = inbound_from_environ(environ, b"{}")
    full = inbound_from(Request(environ), b"{}", "", with_url=False)

    assert replace(lean, received_at=full.received_at) == full
    assert type(lean.query) is type(full.query)
    # Both are built from the environ now: held to werkzeug's own reading of it.
    werkzeug = Request(environ)
    assert (lean.method, lean.media_type) == (werkzeug.method, werkzeug.mimetype)
    assert lean.query == werkzeug.args
