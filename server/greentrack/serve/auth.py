"""Who is who: a request's bearer token → the developer (and whether an administrator) it acts for.

Place in the flow: every handler but ``/health`` asks ``Authenticator.caller`` first. Tokens are stored hashed
(``Store.add_token``/``token_owner``). Rules (``docs/interfaces.md``, "HTTP API"): once any token exists, every
request needs a valid one; a loopback server without tokens serves its own user (as an administrator of
itself); a non-loopback server without tokens refuses everyone (``run`` also refuses to start that way). The
developer of a row always comes from here, never from the request body.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from greentrack.errors import GreentrackError
from greentrack.store import Store

T = TypeVar("T")


@dataclass(frozen=True)
class Caller:
    """The developer a request acts for."""

    developer: str
    admin: bool


class Unauthorized(GreentrackError):
    """No valid bearer token (HTTP 401)."""


class Forbidden(GreentrackError):
    """A valid token that may not do this (HTTP 403)."""


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` serves only this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; None when there is no such header."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("the Authorization header must be 'Bearer <token>'")
    return token.strip()


class LockedStore:
    """The pipeline's ``Store`` as the HTTP layer uses it (tokens, lookups, acceptance, idle energy): one call at
    a time from here, while the pipeline writes records on its own thread. Never a second ``Store`` on the same
    file in this process: closing it would drop the process's SQLite locks (POSIX locks are per process)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()

    def call(self, fn: Callable[[Store], T]) -> T:
        with self._lock:
            return fn(self.store)



class Authenticator:
    """Resolves callers against the token table; ``local_developer`` is the server's own user."""

    def __init__(self, store: LockedStore, *, local_developer: str, loopback: bool) -> None:
        self.store = store
        self.local_developer = local_developer
        self.loopback = loopback

    def caller(self, authorization: str | None) -> Caller:
        """Raises ``Unauthorized`` with the reason; blocking (SQLite): call it off the event loop."""
        token = bearer_token(authorization)
        if token is not None:
            info = self.store.call(lambda s: s.token_owner(token))
            if info is None:
                raise Unauthorized("unknown or revoked token")
            return Caller(info.developer, info.admin)
        if self.store.call(lambda s: s.has_tokens()):
            raise Unauthorized("this server needs a token: send 'Authorization: Bearer <token>' "
                               "(an administrator issues one with `greentrack token add EMAIL`)")
        if not self.loopback:
            raise Unauthorized("this server has no tokens and is not on loopback: it serves nobody")
        return Caller(self.local_developer, admin=True)
