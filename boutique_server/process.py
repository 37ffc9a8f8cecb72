"""One node process: start the node and its line server, serve, stop gracefully.

``serve`` starts the node (storage, peers, groups) and the client listener, logs one
line when the node serves, then waits for SIGTERM or SIGINT. Either one drains (see
``boutique.runtime.drain``): new client commands get ``ERR UNAVAILABLE node ... is
stopping``, leadership is handed over, the commands already taken on are answered,
storage is closed and ``serve`` returns normally (the process exits 0). A second
signal during the drain cuts it short. SIGINT ignored at startup (a job started in
the background from a script) stays ignored; SIGTERM is always honoured.

A node that learns the cluster removed it (``Node.removed``) drains the same way, its
clients told ``ERR UNAVAILABLE node ... was removed from the cluster`` (for at least
``REMOVED_NOTICE`` seconds), and ``serve``
returns a ``Stopped`` with ``removed`` set: the process exits with ``EXIT_REMOVED``.

A stop signal that arrives while the node starts waits (``holding_stop_signals``) and
drains it as soon as it serves. With ``[metrics] port`` (or the node's ``metrics_port``)
set, it also serves ``GET /metrics`` there (see ``metrics_http``). A startup failure is
raised as ``StartupError`` naming the config file, the node, the role (client, peer or
metrics listener) and the address: never a bare ``[Errno 98]``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import trio

from boutique.config import ClusterConfig, NodeConfig
from boutique.runtime.drain import DrainReport, drain
from boutique.runtime.join import register
from boutique.runtime.node import META_GROUP, Node
from boutique.runtime.router import Router

from .metrics_http import MetricsServer
from .server import LINGER_TIMEOUT, LineServer

log = logging.getLogger("boutique")

REMOVED_NOTICE = 1.0
"""Seconds a removed node keeps answering its connected clients' new commands with
``ERR UNAVAILABLE node ... was removed from the cluster`` before it closes them: its
drain is often instant (it leads nothing), and a client should learn why, not just
see its connection close."""

HANDOVER_TIMEOUT = 3.0
"""Seconds a stopping node tries to hand its groups' leadership over."""


class StartupError(Exception):
    """The node could not start; ``str()`` is the whole message for the user."""


@dataclass(frozen=True, slots=True)
class Stopped:
    """How a node process ended: the signal that stopped it and the drain's report
    (None if the drain was cut short by a second signal)."""

    signal_name: str
    report: DrainReport | None
    removed: bool = False
    """The node stopped because the cluster removed it, not because of a signal."""


def stop_signals() -> tuple[signal.Signals, ...]:
    """The signals that stop a node: SIGTERM always, SIGINT unless it was ignored when
    the process started (a background job must not die of the terminal's Ctrl-C)."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        return (signal.SIGTERM,)
    return (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def holding_stop_signals() -> Iterator[None]:
    """Keep stop signals pending until ``serve`` can handle them: a SIGTERM while the
    process loads its config or opens storage must stop it gracefully too, not kill it
    (``kill`` right after a start, or ``--all`` stopping a node it just restarted).
    On the way out they are unblocked again (a startup failure leaves none held)."""
    wanted = stop_signals()
    signal.pthread_sigmask(signal.SIG_BLOCK, wanted)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, wanted)


def _sole_cause(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _listen_error(
    exc: OSError, source: str, me: NodeConfig, role: str, host: str, port: int, key: str
) -> StartupError:
    reason = exc.strerror or str(exc)
    return StartupError(
        f"{source}: node {me.name}: cannot listen for {role} on {host}:{port} ({key}): {reason}"
    )


async def serve(
    config: ClusterConfig,
    me: NodeConfig,
    *,
    join: bool = False,
    source: str = "<command line>",
    signals: tuple[signal.Signals, ...] | None = None,
) -> Stopped:
    """Run the node until a stop signal, then drain it; see the module docstring."""
    wanted = stop_signals() if signals is None else signals
    with trio.open_signal_receiver(*wanted) as received:
        # ``holding_stop_signals`` kept a signal that came during startup pending; it is
        # delivered now, to the receiver, and drains the node once it serves.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, wanted)
        async with trio.open_nursery() as nursery:
            try:
                node: Node = await nursery.start(Node(config, me).run)
            except BaseException as exc:
                cause = _sole_cause(exc)
                if isinstance(cause, OSError):
                    raise _listen_error(
                        cause, source, me, "peers", me.host, me.peer_port, "peer_port"
                    ) from None
                raise
            if join:
                nursery.start_soon(register, config, me)
            router = Router(node)
            server = LineServer(config, me, node, router)
            try:
                port = await nursery.start(server.serve)
            except BaseException as exc:
                cause = _sole_cause(exc)
                if isinstance(cause, OSError):
                    raise _listen_error(
                        cause,
                        source,
                        me,
                        "clients",
                        config.listen_host,
                        me.client_port,
                        "client_port",
                    ) from None
                raise
            log.info(
                "node %s listening for clients on %s:%d (peers on %s:%d, data in %s)",
                me.name,
                config.listen_host,
                port,
                me.host,
                node.peer_port,
                me.data_dir,
            )
            metrics_port = config.metrics_port_of(me)
            if metrics_port:
                metrics = MetricsServer(server.metrics.render, config.metrics_host, metrics_port)
                try:
                    await nursery.start(metrics.run)
                except BaseException as exc:
                    cause = _sole_cause(exc)
                    if isinstance(cause, OSError):
                        # The endpoint's own message wraps the socket's: report the latter.
                        if isinstance(cause.__cause__, OSError):
                            cause = cause.__cause__
                        key = "metrics.port" if me.metrics_port is None else "metrics_port"
                        raise _listen_error(
                            cause, source, me, "metrics", config.metrics_host, metrics_port, key
                        ) from None
                    raise
            nursery.start_soon(_announce_when_serving, node, f"{config.listen_host}:{port}")
            stopped = await _drain_on_signal(received, node, server)
            if stopped.report is not None:
                await server.close_connections(LINGER_TIMEOUT + 1.0)
            nursery.cancel_scope.cancel()
    return stopped


async def _announce_when_serving(node: Node, address: str) -> None:
    """One line once the node has joined its groups: the meta group (the catalog every
    request is routed by) has a leader this node knows."""
    while True:
        meta = node.groups.get(META_GROUP)
        if meta is not None and meta.leader:
            break
        await trio.sleep(node.settings.tick_interval)
    print(f"boutique node {node.me.name} ready on {address}", flush=True)
    log.info(
        "node %s serving on %s: joined %d groups (meta leader: node %d)",
        node.me.name,
        address,
        len(node.groups),
        meta.leader,
    )


async def _first_stop(signals: AsyncIterator[int], node: Node) -> str | None:
    """Wait for a stop signal (its name) or for the node's removal (None)."""
    name: str | None = None
    async with trio.open_nursery() as nursery:

        async def on_signal() -> None:
            nonlocal name
            name = signal.Signals(await anext(signals)).name
            nursery.cancel_scope.cancel()

        async def on_removed() -> None:
            await node.removed.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(on_signal)
        nursery.start_soon(on_removed)
    return name


async def _drain_on_signal(received: AsyncIterator[int], node: Node, server: LineServer) -> Stopped:
    signals = aiter(received)
    first = await _first_stop(signals, node)
    removed = first is None
    name = "removed" if first is None else first
    if removed:
        server.removed = True  # Node.on_removed logged the one line about it
    else:
        log.info("node %s: %s received: stopping (handing over leadership)", node.me.name, name)
    server.stopping = True
    report: DrainReport | None = None
    async with trio.open_nursery() as nursery:

        async def second_signal() -> None:
            again = await anext(signals)
            log.warning(
                "node %s: %s received again: stopping at once",
                node.me.name,
                signal.Signals(again).name,
            )
            nursery.cancel_scope.cancel()

        nursery.start_soon(second_signal)
        report = await drain(
            node,
            busy=server.busy,
            handover_timeout=HANDOVER_TIMEOUT,
            settle_timeout=node.config.request_timeout,
        )
        if removed:
            await trio.sleep(REMOVED_NOTICE)
        nursery.cancel_scope.cancel()
    return Stopped(name, report, removed)


def stopped_line(me: NodeConfig, stopped: Stopped) -> str:
    """The one log line of a stop."""
    report = stopped.report
    if report is None:
        return f"node {me.name} stopped ({stopped.signal_name}, drain cut short, pid {os.getpid()})"
    parts = [
        f"left the lead of {report.led - report.still_leading} of the {report.led} groups it led"
    ]
    if report.unsettled:
        parts.append("some requests had no outcome in time")
    else:
        parts.append("every request taken on was answered")
    why = "removed from the cluster" if stopped.removed else stopped.signal_name
    return (
        f"node {me.name} stopped ({why}): {', '.join(parts)}, storage "
        f"closed, in {report.seconds:.2f}s"
    )
