"""Secrets at rest and token hashing."""

from __future__ import annotations

import base64
import hashlib
import secrets

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


class SecretBox:
    """Encrypts source secrets with a key derived from SECRET_KEY (Fernet: AES + HMAC)."""

    def __init__(self, secret_key: str) -> None:
        derived = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"gatehouse.source-secrets"
        ).derive(secret_key.encode())
        self._fernet = Fernet(base64.urlsafe_b64encode(derived))

    def seal(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def open(self, sealed: str) -> str:
        try:
            return self._fernet.decrypt(sealed.encode()).decode()
        except InvalidToken as exc:
            raise RuntimeError(
                "a stored source secret cannot be decrypted: SECRET_KEY changed since it was "
                "stored; restore the old SECRET_KEY or rotate the source's secret"
            ) from exc


def hash_token(token: str) -> str:
    # API tokens are 256-bit random strings, so a fast hash is enough (no dictionary to guess).
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "gh_" + secrets.token_urlsafe(32)


def new_standard_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def new_plain_secret() -> str:
    return secrets.token_urlsafe(32)
