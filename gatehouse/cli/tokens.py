from __future__ import annotations

import click
from flask.cli import AppGroup
from sqlalchemy import select

from gatehouse.crypto import hash_token, new_token
from gatehouse.extensions import db
from gatehouse.models import ROLES, ApiToken

tokens = AppGroup("tokens", help="API tokens for the membership site (reader) and admins.")


@tokens.command("create")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), required=True)
def create(name: str, role: str) -> None:
    """Create a token and print it once (only its hash is stored)."""
    if db.session.execute(select(ApiToken.id).where(ApiToken.name == name)).first():
        raise click.ClickException(f"a token named {name!r} exists; choose another name")
    token = new_token()
    db.session.add(ApiToken(name=name, role=role, token_hash=hash_token(token)))
    db.session.commit()
    click.echo(f"Token {name} ({role}), shown once:")
    click.echo(token)
