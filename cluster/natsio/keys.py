"""Names as NATS allows them, sans-I/O: key-value keys, subject tokens and bucket names.

A NATS KV key is a subject: tokens of ``[-/_=a-zA-Z0-9]`` separated by dots. trimicro's keys,
service names and node ids are any unicode. :func:`escape` keeps what NATS allows (so
``user/1`` stays ``user/1`` and an operator reading the bucket recognises it) and writes every
other byte of the utf-8 as ``=XX`` (``=`` itself is ``=3D``; a dot is ``=2E``, so one escaped
text is always one token); the empty text is ``=`` alone, which no escape produces.
:func:`unescape` is its inverse. Order is not kept, so scans sort decoded keys themselves.

A bucket name allows only ``[-_a-zA-Z0-9]``: :func:`bucket_name` makes one from trimicro's
(database, table) with a readable prefix and a hash (names may hold anything, even ``/``).
"""

from __future__ import annotations

import hashlib
import re

__all__ = ["bucket_name", "escape", "unescape"]

_SAFE = frozenset(b"-/_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_ESCAPE = re.compile(rb"=([0-9A-F]{2})")
_BUCKET_UNSAFE = re.compile(r"[^-_a-zA-Z0-9]+")


def escape(text: str) -> str:
    """``text`` as one NATS token (see the module docstring)."""
    if not text:
        return "="
    raw = text.encode()
    if all(b in _SAFE for b in raw):
        return text
    return "".join(chr(b) if b in _SAFE else f"={b:02X}" for b in raw)


def unescape(token: str) -> str:
    """The text :func:`escape` made ``token`` from."""
    if token == "=":
        return ""
    if "=" not in token:
        return token
    return _ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), token.encode()).decode()


def bucket_name(prefix: str, *parts: str) -> str:
    """A valid bucket name for ``parts``: ``prefix_readable_hash`` (the hash tells apart names
    that read the same once made safe, as ``a/b`` and ``a_b``)."""
    digest = hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]
    readable = _BUCKET_UNSAFE.sub("_", "_".join(parts))[:40]
    return f"{prefix}_{readable}_{digest}"
