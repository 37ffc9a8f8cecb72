"""Admission of connections that have not proved who they are yet, and quiet logging.

Both listening edges (the peer port's handshake and the client port before ``AUTH``)
hold a connection for a while before they know whether it is friendly. ``Admission``
bounds how many such connections exist at once, in total and per source address, so
that one source cannot take every slot and lock the real peers or clients out.
``ThrottledLog`` turns a flood of refusals into one summary line per interval instead
of a line per attempt (the counts stay exact; only the logging is thinned).

This module only counts: it never touches a socket, never sleeps, never imports trio,
and never decides anything about connections that are already authenticated.
"""

from __future__ import annotations

import logging


class Admission:
    """How many unauthenticated connections exist, in total and per source address.

    ``admit(source)`` takes a slot (False when the total or the source's share is used
    up); every admitted connection must ``release`` its slot exactly once.
    """

    def __init__(self, total: int, per_source: int) -> None:
        if total < 1 or per_source < 1:
            raise ValueError("admission limits must be positive")
        self.total = total
        self.per_source = per_source
        self._by_source: dict[str, int] = {}
        self._count = 0

    @property
    def count(self) -> int:
        """Slots taken now."""
        return self._count

    def held_by(self, source: str) -> int:
        return self._by_source.get(source, 0)

    def admit(self, source: str) -> bool:
        held = self._by_source.get(source, 0)
        if self._count >= self.total or held >= self.per_source:
            return False
        self._by_source[source] = held + 1
        self._count += 1
        return True

    def release(self, source: str) -> None:
        held = self._by_source.get(source, 0)
        if held <= 0:
            raise ValueError(f"release without admit for {source!r}")
        if held == 1:
            del self._by_source[source]  # the table holds only sources with slots
        else:
            self._by_source[source] = held - 1
        self._count -= 1


class ThrottledLog:
    """Logs the first ``burst`` events of an interval, then one summary per ``interval``.

    ``now`` is passed in by the caller (seconds on any monotonic clock), so this works
    under a mock clock and needs no timer task: a summary is written by the first event
    after the interval, and a burst that simply stops leaves its tail unlogged (the
    caller's counters still have it).
    """

    def __init__(self, logger: logging.Logger, interval: float = 10.0, burst: int = 5) -> None:
        self.logger = logger
        self.interval = interval
        self.burst = burst
        self._since: float | None = None
        self._logged = 0
        self._suppressed = 0

    def warning(self, now: float, message: str, *args: object) -> None:
        if self._since is not None and now - self._since < self.interval:
            if self._logged < self.burst:
                self._logged += 1
                self.logger.warning(message, *args)
            else:
                self._suppressed += 1
            return
        if self._suppressed and self._since is not None:
            self.logger.warning(
                "%d more like this were not logged in the last %.0f s; latest: " + message,
                self._suppressed,
                now - self._since,
                *args,
            )
        else:
            self.logger.warning(message, *args)
        self._since = now
        self._logged = 1
        self._suppressed = 0
