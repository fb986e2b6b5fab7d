"""API keys: `opa_<prefix>_<secret>`. The prefix is public (it finds the row and names the key in listings);
only the SHA-256 of the whole key is stored. The secret is 32 bytes from `secrets`, so a fast hash is right: there
is nothing a slow hash would protect against guessing."""

import hashlib
import re
import secrets
from dataclasses import dataclass

KEY_PREFIX = "opa"
_FORMAT = re.compile(r"^opa_(?P<prefix>[a-z0-9]{8})_(?P<secret>[A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class NewApiKey:
    key: str
    """The key itself: shown once, never stored."""
    prefix: str
    key_hash: str


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_api_key() -> NewApiKey:
    prefix = secrets.token_hex(4)
    key = f"{KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
    return NewApiKey(key=key, prefix=prefix, key_hash=hash_api_key(key))


def parse_api_key(value: str) -> str | None:
    """The key's prefix, or None when `value` does not have the shape of one of our keys."""
    match = _FORMAT.fullmatch(value)
    return match["prefix"] if match else None


def looks_like_api_key(value: str) -> bool:
    return value.startswith(f"{KEY_PREFIX}_")
