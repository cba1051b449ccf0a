"""Single-flight marks: at most one background re-read of a thing at a time, and none lost for good.

The key cache (:meth:`serving.guards.keycache.KeyCache.begin_refresh`) and the
deployment router (:meth:`serving.rollout.router.Router.claim_refresh`) each let one
request start a background registry read while the others go on. The mark
must lapse on its own: a task whose event loop closed before it ran (an app
driven by several loops, as in tests) never releases it, and a mark held
forever would stop every later re-read.
"""

from __future__ import annotations

import threading


class Claims:
    """Marks by name, each held by one claimant until released or ``lapse`` seconds old (thread-safe)."""

    def __init__(self, lapse: float) -> None:
        self.lapse = lapse
        self._since: dict[str, float] = {}
        self._lock = threading.Lock()

    def held(self, name: str, now: float) -> bool:
        """Whether ``name`` is claimed and its claim has not lapsed (a clock that stepped back lapses it)."""
        since = self._since.get(name)
        return since is not None and 0.0 <= now - since < self.lapse

    def take(self, name: str, now: float) -> bool:
        """Claim ``name`` unless it is held; the caller must :meth:`release` it when its work is over."""
        with self._lock:
            if self.held(name, now):
                return False
            self._since[name] = now
            return True

    def release(self, name: str) -> None:
        """The claimant's work on ``name`` is over, whatever its outcome."""
        with self._lock:
            self._since.pop(name, None)
