"""A transparent TCP proxy that delays what it forwards: network latency without netem.

Runs inside one host's network namespace (see ``netns.NetLab``), where an iptables NAT
rule redirects every connection the host dials to a peer port here. For each one it
asks the kernel where the connection was headed (``SO_ORIGINAL_DST``), dials that
address itself (its own socket carries a firewall mark, so the NAT rule lets it pass),
and forwards bytes both ways. Each chunk leaves ``delay`` ± ``jitter`` seconds after it
arrived, never before the chunk ahead of it: a TCP stream keeps its order, so jitter
shows as bunching, as on a real link.

The settings file (JSON ``{"delay": s, "jitter": s}``) is re-read when it changes, so a
test can add and remove latency while connections stay open. Memory is bounded: at
most ``MAX_QUEUED`` chunks wait per direction, after which the reader waits too.

    python -m boutique.testing.delay_proxy --port 7999 --mark 0x5b --settings FILE

It only forwards to the address each connection was already headed for; it never opens
a connection of its own accord.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

SO_ORIGINAL_DST = 80
SO_MARK = getattr(socket, "SO_MARK", 36)
MAX_QUEUED = 64
CHUNK = 65536


@dataclass(slots=True)
class Settings:
    delay: float = 0.0
    jitter: float = 0.0


def original_destination(sock: trio.socket.SocketType) -> tuple[str, int]:
    """Where a redirected connection was headed before the NAT rule sent it here."""
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port = struct.unpack_from("!H", raw, 2)[0]
    address = socket.inet_ntoa(raw[4:8])
    return address, port


class DelayProxy:
    def __init__(self, settings_path: Path, mark: int, seed: int | None = None) -> None:
        self.settings_path = settings_path
        self.mark = mark
        self.settings = Settings()
        self.rng = random.Random(seed)
        self._mtime = 0.0

    def reload(self) -> None:
        try:
            mtime = self.settings_path.stat().st_mtime
            if mtime == self._mtime:
                return
            values = json.loads(self.settings_path.read_text())
            self.settings = Settings(float(values["delay"]), float(values["jitter"]))
            self._mtime = mtime
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a half-written or missing file: keep the last good settings

    async def watch_settings(self) -> None:
        while True:
            self.reload()
            await trio.sleep(0.05)

    def lateness(self) -> float:
        s = self.settings
        return max(0.0, s.delay + self.rng.uniform(-s.jitter, s.jitter))

    async def handle(self, inbound: trio.SocketStream) -> None:
        """Forward one redirected connection until either side ends or breaks it. Never
        raises: one broken connection must not take the proxy (and every link) down."""
        async with inbound:
            try:
                target = original_destination(inbound.socket)
                out = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                out.setsockopt(socket.SOL_SOCKET, SO_MARK, self.mark)
                try:
                    await out.connect(target)
                except BaseException:
                    out.close()
                    raise
            except OSError:
                return
            async with trio.SocketStream(out) as outbound, trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, inbound, outbound, nursery.cancel_scope)
                nursery.start_soon(self._pump, outbound, inbound, nursery.cancel_scope)

    async def _pump(
        self, source: trio.SocketStream, sink: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        """One direction. What was read is still delivered after the source ends or
        breaks; then the sink gets an end-of-file, or the whole connection ends
        (``scope``) if the source broke or the sink cannot take more."""
        send, receive = trio.open_memory_channel[tuple[float, bytes]](MAX_QUEUED)
        broken = False

        async def deliver() -> None:
            try:
                async for due, data in receive:
                    await trio.sleep_until(due)
                    await sink.send_all(data)
                if broken:
                    scope.cancel()
                else:
                    await sink.send_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(deliver)
            last = 0.0
            async with send:
                try:
                    while data := await source.receive_some(CHUNK):
                        last = max(trio.current_time() + self.lateness(), last)
                        await send.send((last, data))
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    broken = True


async def serve(port: int, proxy: DelayProxy, ready: Path) -> None:
    listeners = await trio.open_tcp_listeners(port, host="0.0.0.0")
    ready.write_text("listening\n")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(proxy.watch_settings)
        await trio.serve_listeners(proxy.handle, listeners)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m boutique.testing.delay_proxy")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mark", type=lambda text: int(text, 0), required=True)
    parser.add_argument("--settings", type=Path, required=True)
    parser.add_argument("--seed", type=int)
    args = parser.parse_args(argv)
    proxy = DelayProxy(args.settings, args.mark, args.seed)
    proxy.reload()
    ready = args.settings.with_name(args.settings.name + ".ready")
    trio.run(serve, args.port, proxy, ready)


if __name__ == "__main__":
    main()
