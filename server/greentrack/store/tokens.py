"""API tokens of ``greentrack serve``: how a token is made, hashed and described (schema version 4).

Place in the flow: an administrator issues a token per developer (``Store.add_token``); the HTTP server asks
``Store.token_owner`` who sends a request. Only the SHA-256 hex of a token is stored, never the token, so a copy
of the database does not let anyone in. This module builds the SQL; ``Store`` runs it.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

#: Every token starts with this, so a leaked one is easy to recognise (secret scanners, logs).
TOKEN_PREFIX = "gt_"
#: How many hex digits of the hash name a token in listings (``TokenInfo.id``).
ID_HEX_DIGITS = 12


@dataclass(frozen=True)
class TokenInfo:
    """What is known of one token: never the token itself. ``id``: the first hex digits of its SHA-256."""

    id: str
    developer: str
    admin: bool
    created_ts: str
    revoked_ts: str | None


def new_token() -> str:
    """A fresh token: ``gt_`` and 32 random bytes, URL-safe base64."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """The SHA-256 hex digest of ``token`` (UTF-8; a lone surrogate cannot be a token we issued)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def insert_token_sql(*, token_hash_hex: str, developer: str, admin: bool, created_ts: str
                     ) -> tuple[str, dict[str, Any]]:
    return ("INSERT INTO api_tokens (token_hash, developer, admin, created_ts) VALUES (:h, :dev, :admin, :ts)",
            {"h": token_hash_hex, "dev": developer, "admin": 1 if admin else 0, "ts": created_ts})


_SELECT = "SELECT token_hash, developer, admin, created_ts, revoked_ts FROM api_tokens"


def owner_sql(token_hash_hex: str) -> tuple[str, dict[str, Any]]:
    """The token with that hash, if it is not revoked."""
    return f"{_SELECT} WHERE token_hash = :h AND revoked_ts IS NULL", {"h": token_hash_hex}


def list_sql() -> tuple[str, dict[str, Any]]:
    return f"{_SELECT} ORDER BY created_ts, token_hash", {}


def revoke_sql(developer: str, revoked_ts: str) -> tuple[str, dict[str, Any]]:
    return ("UPDATE api_tokens SET revoked_ts = :ts WHERE developer = :dev AND revoked_ts IS NULL",
            {"dev": developer, "ts": revoked_ts})


def token_info(row: dict[str, Any]) -> TokenInfo:
    """A ``TokenInfo`` from a row of ``_SELECT`` (by column name)."""
    return TokenInfo(
        id=str(row["token_hash"])[:ID_HEX_DIGITS], developer=str(row["developer"]), admin=bool(row["admin"]),
        created_ts=str(row["created_ts"]), revoked_ts=None if row["revoked_ts"] is None else str(row["revoked_ts"]),
    )
