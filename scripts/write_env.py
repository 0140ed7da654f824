"""Write `.env` with a random SECRET_KEY once, for local use; never overwrite it."""

import secrets
from pathlib import Path

env = Path(__file__).resolve().parent.parent / ".env"
if not env.exists() or "SECRET_KEY=" not in env.read_text():
    with env.open("a") as fh:
        fh.write(f"SECRET_KEY={secrets.token_urlsafe(48)}\n")
    print(f"Wrote a random SECRET_KEY to {env}")
