"""Consumers' API keys: how they are made, shown, hashed and found.

A key is ``ok_`` and 32 random bytes from ``secrets`` (url-safe base64, 43 characters):
256 bits nobody can guess or enumerate. It is shown once, in the answer that creates it;
the store keeps its SHA-256 (hex) and its first characters (``prefix``, 11 characters with
``ok_``, so an operator can tell keys apart). A plain SHA-256 suffices for a key of that
entropy: what a salt or a slow hash protect against (dictionaries, brute force of a
password) does not apply, and a keyed hash would need a secret shared by every instance of
an etcd store. A presented key is found by its hash in a dict (O(1)); the lookup leaks
nothing useful through timing, since an attacker cannot choose the hash it compares.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

__all__ = ("KEY_PREFIX", "NAME_RE", "NewKey", "hash_key", "new_key", "new_key_id")

KEY_PREFIX = "ok_"
SHOWN = 11  # characters of a key kept as its prefix
NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # consumer names, as endpoint names
_KEY_RE = re.compile(r"^ok_[A-Za-z0-9_-]{43}$")


@dataclass(frozen=True, slots=True)
class NewKey:
    key_id: str
    key: str  # shown once, never stored
    prefix: str
    hash: str


def hash_key(key: str) -> str | None:
    """The stored form of ``key``; None for what cannot be a key (no lookup needed)."""
    if _KEY_RE.match(key) is None:
        return None
    return hashlib.sha256(key.encode()).hexdigest()


def new_key_id() -> str:
    return secrets.token_hex(8)


def new_key() -> NewKey:
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    digest = hash_key(key)
    assert digest is not None
    return NewKey(new_key_id(), key, key[:SHOWN], digest)
