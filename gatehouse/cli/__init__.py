"""flask sources | tokens | access | events | worker | relay: thin commands over the packages."""

from __future__ import annotations

from flask import Flask


def register(app: Flask) -> None:
    from gatehouse.cli.access import access
    from gatehouse.cli.events import events
    from gatehouse.cli.members import members
    from gatehouse.cli.sources import sources
    from gatehouse.cli.tokens import tokens
    from gatehouse.cli.worker import relay, worker

    for group in (sources, tokens, access, events, worker, relay, members):
        app.cli.add_command(group)
