"""Sealed secrets in config: a value ``"sealed:<base64>"`` (made by :func:`seal`, XSalsa20-Poly1305
with PyNaCl's ``SecretBox``) stays sealed in the merged map, changes, ``repr`` and logs; only
:meth:`~trimicro.cluster.config.Config.get` opens it (:func:`unseal`), with the config's key."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

import nacl.exceptions
import nacl.secret
import nacl.utils

from trimicro.mailbox.errors import BadRequest

__all__ = ["SEALED", "box", "generate_secret_key", "is_sealed", "seal", "unseal"]

SEALED = "sealed:"


def generate_secret_key() -> bytes:
    """A fresh random key for :func:`seal` and ``open_config(secret_key=...)``."""
    return nacl.utils.random(nacl.secret.SecretBox.KEY_SIZE)


def box(key: bytes) -> nacl.secret.SecretBox:
    if not isinstance(key, bytes) or len(key) != nacl.secret.SecretBox.KEY_SIZE:
        raise BadRequest(f"a secret key is {nacl.secret.SecretBox.KEY_SIZE} bytes")
    return nacl.secret.SecretBox(key)


def seal(key: bytes, plaintext: str) -> str:
    """Encrypt ``plaintext`` (XSalsa20-Poly1305) into a ``"sealed:..."`` value for any source."""
    return SEALED + base64.b64encode(bytes(box(key).encrypt(plaintext.encode()))).decode()


def unseal(box: nacl.secret.SecretBox | None, value: str, path: str) -> str:
    if box is None:
        raise BadRequest(f"cannot unseal {path}: no secret key was given to the config")
    try:
        return box.decrypt(base64.b64decode(value[len(SEALED) :], validate=True)).decode()
    except (binascii.Error, ValueError, nacl.exceptions.CryptoError):
        raise BadRequest(f"cannot unseal {path}") from None  # no detail: it would leak about the key


def is_sealed(value: Any) -> bool:
    if isinstance(value, str):
        return value.startswith(SEALED)
    if isinstance(value, Mapping):
        return any(is_sealed(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(is_sealed(v) for v in value)
    return False
