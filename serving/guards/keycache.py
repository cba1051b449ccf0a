"""A short-lived, per-process cache of authenticated API keys.

Looking a key up in the registry costs one indexed query per request: about
0.5 ms on SQLite here, plus a network round trip on PostgreSQL, which is most
of what the guarded predict path adds over a bare endpoint
(``benchmarks/serving.py``). The cache keeps, per key id, the SHA-256 of the
secret that authenticated and the key's :class:`~serving.guards.keys.KeyInfo`, for at
most ``ttl`` seconds of the app's clock.

What stays exact and what is bounded:

- a wrong secret, a malformed or an unknown key is never answered from the
  cache (only successful look-ups are stored, and a hit needs the same secret
  hash, compared in constant time);
- expiry is checked on every hit against the request's instant;
- a key revoked through *this* server's admin route is forgotten at once;
- a key revoked elsewhere (the CLI, another replica) is refused by this
  server at most ``ttl`` seconds later (``FEDGUARD_SERVE_AUTH_CACHE_SECONDS``,
  1 s by default; 0 turns the cache off and reads the registry every time).

Under steady traffic a key should never fall out of the cache: when every
request that arrives while an entry is being re-read also misses and queries
the registry, a 1 s bound turns into a burst of queries once a second that
stalls the request path (the p99 of ``benchmarks/serving.py``).
:meth:`KeyCache.begin_refresh` therefore lets exactly one request per key
re-read it in the background once the entry is half its ``ttl`` old, while
the others keep being answered from the entry, which stays bounded by
``ttl`` as before (:func:`serving.guards.auth.resolve_key`).

The cache holds no secret: only the hash the registry stores anyway.
"""

from __future__ import annotations

import hmac
import threading
from collections import OrderedDict
from dataclasses import dataclass

from serving.claims import Claims
from serving.guards.keys import KEY_PATTERN, AuthenticationError, KeyInfo, hash_secret

MAX_ENTRIES = 10_000


@dataclass(frozen=True)
class _Entry:
    secret_hash: str
    info: KeyInfo
    fetched_at: float


class KeyCache:
    """Successful authentications by key id, each trusted for ``ttl`` seconds.

    Parameters
    ----------
    ttl
        Seconds an entry is trusted; ``0`` disables the cache.
    max_entries
        Bound on memory: the oldest entries are dropped past it.
    """

    def __init__(self, ttl: float = 0.0, max_entries: int = MAX_ENTRIES) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._refreshing = Claims(lapse=ttl)  # key ids being re-read (one lost with its event loop lapses)
        self._lock = threading.Lock()

    def lookup(self, presented: str | None, now: float) -> KeyInfo | None:
        """The cached :class:`KeyInfo` of ``presented``, or ``None`` when the registry must be asked.

        Raises
        ------
        AuthenticationError
            The cached key has expired at ``now`` (expiry is never cached away).
        """
        if self.ttl <= 0 or not presented:
            return None
        match = KEY_PATTERN.fullmatch(presented)
        if match is None:
            return None
        key_id, secret = match.groups()
        with self._lock:
            entry = self._entries.get(key_id)
        if entry is None or now - entry.fetched_at >= self.ttl or now < entry.fetched_at:
            return None
        if not hmac.compare_digest(hash_secret(secret), entry.secret_hash):
            return None
        if entry.info.expires_at is not None and now >= entry.info.expires_at.timestamp():
            self.forget(key_id)
            raise AuthenticationError(f"API key {key_id} expired at {entry.info.expires_at.isoformat()}")
        return entry.info

    def remember(self, presented: str, info: KeyInfo, now: float) -> None:
        """Store a key the registry just accepted."""
        if self.ttl <= 0:
            return
        match = KEY_PATTERN.fullmatch(presented)
        if match is None or match.group(1) != info.key_id:
            return
        with self._lock:
            self._entries[info.key_id] = _Entry(hash_secret(match.group(2)), info, now)
            self._entries.move_to_end(info.key_id)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def begin_refresh(self, key_id: str, now: float) -> bool:
        """Whether the caller should re-read ``key_id`` now: its entry is half its ``ttl`` old and nobody else does.

        A ``True`` marks the refresh as running; the caller must call
        :meth:`end_refresh` when it is done, whatever the outcome.
        """
        with self._lock:
            entry = self._entries.get(key_id)
            if entry is None or 0.0 <= now - entry.fetched_at < self.ttl / 2:
                return False
        return self._refreshing.take(key_id, now)

    def end_refresh(self, key_id: str) -> None:
        """The refresh that :meth:`begin_refresh` allowed is over."""
        self._refreshing.release(key_id)

    def forget(self, key_id: str) -> None:
        """Drop ``key_id`` (after this server revoked it)."""
        with self._lock:
            self._entries.pop(key_id, None)
