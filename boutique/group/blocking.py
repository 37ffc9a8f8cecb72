"""`BlockingMember`: the `Member` API for code that is not async.

The member runs in its own trio event loop on a background thread; every method hands
its call to that loop with `trio.from_thread` and blocks until it finishes. Errors are
the same classes the async API raises. A script uses it like a file:

    with BlockingMember.start(Counter(), node_id=1, members=..., secret=...) as member:
        member.command(("incr", 1))

Never call its methods from inside a trio run (use `Member` there): they block the
calling thread.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Awaitable, Callable, Mapping
from os import PathLike
from types import TracebackType
from typing import Any, Generic, TypeVar

import trio

from boutique.machine import StateMachine
from boutique.runtime.host import HostSettings

from .envelope import Address
from .errors import Unavailable
from .member import DEFAULT_TIMEOUT, MEMBERSHIP_TIMEOUT, Member, MemberStatus

__all__ = ["BlockingMember"]

C = TypeVar("C")
R = TypeVar("R")
Q = TypeVar("Q")
A = TypeVar("A")
T = TypeVar("T")


class BlockingMember(Generic[C, R, Q, A]):
    """A group member driven from plain (non-async) code; see `Member` for the meaning
    of every argument and method. Make one with `BlockingMember.start(...)`; stop it
    with `close()` or by leaving a `with` block."""

    def __init__(self, member: Member[C, R, Q, A]) -> None:
        self._member = member
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._thread_main, name=f"boutique-member-{member.node_id}", daemon=True
        )

    @classmethod
    def start(
        cls,
        machine: StateMachine[Any, C, R, Q, A],
        *,
        node_id: int,
        members: Mapping[int, Address],
        secret: bytes | str,
        data_dir: str | PathLike[str] | None = None,
        group: str = "default",
        join: bool = False,
        listen: Address | None = None,
        settings: HostSettings | None = None,
    ) -> BlockingMember[C, R, Q, A]:
        """Start a member on a background thread; returns once it listens. Raises what
        starting raised (e.g. `OSError` if the port is taken)."""
        member = Member(
            machine,
            node_id=node_id,
            members=members,
            secret=secret,
            data_dir=data_dir,
            group=group,
            join=join,
            listen=listen,
            settings=settings,
        )
        blocking = cls(member)
        blocking._thread.start()
        blocking._started.wait()
        if blocking._error is not None:
            blocking._thread.join()
            raise blocking._error
        return blocking

    def _thread_main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:
            self._error = exc
        finally:
            self._started.set()  # unblock `start` if the member never came up

    async def _serve(self) -> None:
        async with self._member._running():
            self._stop = trio.Event()
            self._token = trio.lowlevel.current_trio_token()
            self._started.set()
            await self._stop.wait()

    def close(self) -> None:
        """Stop the member and wait for its thread. Safe to call twice."""
        if self._token is not None and self._stop is not None:
            stop = self._stop
            with contextlib.suppress(trio.RunFinishedError):  # it had stopped already
                trio.from_thread.run_sync(stop.set, trio_token=self._token)
        self._thread.join()

    def __enter__(self) -> BlockingMember[C, R, Q, A]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # --- The Member API, blocking ---------------------------------------------------------

    @property
    def node_id(self) -> int:
        return self._member.node_id

    def command(self, command: C, timeout: float = DEFAULT_TIMEOUT, *, forward: bool = True) -> R:
        return self._call(self._member.command, command, timeout, forward=forward)

    def query(self, query: Q, timeout: float = DEFAULT_TIMEOUT) -> A:
        return self._call(self._member.query, query, timeout)

    def local_query(self, query: Q) -> A:
        return self._call_sync(functools.partial(self._member.local_query, query))

    def leader(self) -> int | None:
        return self._call_sync(self._member.leader)

    def status(self) -> MemberStatus:
        return self._call_sync(self._member.status)

    def wait_ready(self, timeout: float = 10.0) -> None:
        self._call(self._member.wait_ready, timeout)

    def add_member(
        self, node_id: int, address: Address, timeout: float = MEMBERSHIP_TIMEOUT
    ) -> None:
        self._call(self._member.add_member, node_id, address, timeout)

    def remove_member(self, node_id: int, timeout: float = MEMBERSHIP_TIMEOUT) -> None:
        self._call(self._member.remove_member, node_id, timeout)

    def transfer_leadership(self, node_id: int, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._call(self._member.transfer_leadership, node_id, timeout)

    # Documented on `Member`; the wrappers above only change how the caller waits.
    command.__doc__ = Member.command.__doc__
    query.__doc__ = Member.query.__doc__
    local_query.__doc__ = Member.local_query.__doc__
    leader.__doc__ = Member.leader.__doc__
    status.__doc__ = Member.status.__doc__
    wait_ready.__doc__ = Member.wait_ready.__doc__
    add_member.__doc__ = Member.add_member.__doc__
    remove_member.__doc__ = Member.remove_member.__doc__
    transfer_leadership.__doc__ = Member.transfer_leadership.__doc__

    def _call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        token = self._running_token()
        try:
            return trio.from_thread.run(functools.partial(fn, *args, **kwargs), trio_token=token)
        except trio.RunFinishedError:
            raise Unavailable(self._stopped_reason()) from None

    def _call_sync(self, fn: Callable[[], T]) -> T:
        token = self._running_token()
        try:
            return trio.from_thread.run_sync(fn, trio_token=token)
        except trio.RunFinishedError:
            raise Unavailable(self._stopped_reason()) from None

    def _running_token(self) -> trio.lowlevel.TrioToken:
        if self._token is None or not self._thread.is_alive():
            raise Unavailable(self._stopped_reason())
        return self._token

    def _stopped_reason(self) -> str:
        if self._error is not None:
            return f"the member stopped: {self._error!r}"
        return "the member is not running"
