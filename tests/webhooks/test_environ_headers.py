"""The webhook view reads headers straight from the WSGI environ, as werkzeug would."""

from __future__ import annotations

from werkzeug.datastructures import EnvironHeaders

from gatehouse.webhooks.views import environ_headers


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
