"""Joining a running cluster: a new node registers itself through a seed.

A node started with ``--join`` knows the cluster's secret and settings and the founding
nodes (its config file), but is not in the registry. It asks a seed, over the line
protocol, to ``ADMIN ADD-NODE`` it; once the registry holds it, every node learns its
address, the mover makes it a learner of the meta group, and ranges can be moved to it.
The transport's HMAC handshake is what keeps a node without the secret out: a
registered node that cannot prove it receives nothing.
"""

from __future__ import annotations

import logging

import trio

from boutique.config import ClusterConfig, NodeConfig
from boutique.wire import request_line

log = logging.getLogger("boutique.join")


async def register(config: ClusterConfig, me: NodeConfig) -> None:
    """Ask seeds in turn until one accepts; retries with backoff until cancelled."""
    line = f"ADMIN ADD-NODE {me.name} {me.id} {me.host} {me.client_port} {me.peer_port}\n"
    delay = 0.1
    while True:
        for seed in config.nodes:
            if seed.id == me.id:
                continue
            reply = await _ask(seed, line, config.password)
            if reply.startswith("node ") or reply == "OK":
                log.info("registered with the cluster through %s: %s", seed.name, reply)
                return
            log.info("seed %s did not register us yet: %s", seed.name, reply or "no answer")
        await trio.sleep(delay)
        delay = min(delay * 2, 2.0)


async def _ask(seed: NodeConfig, line: str, password: str | None) -> str:
    try:
        with trio.move_on_after(5):
            stream = await trio.open_tcp_stream(seed.host, seed.client_port)
            async with stream:
                if password is not None:
                    # The shared quoting: a password with a quote or a backslash in it
                    # must reach the server as it is, or the node retries forever.
                    await stream.send_all(request_line(b"AUTH", password.encode()))
                    if (await _line(stream)) != "OK":
                        return "AUTH refused"
                await stream.send_all(line.encode())
                return await _line(stream)
    except OSError as exc:
        return f"unreachable: {exc}"
    return "timed out"


async def _line(stream: trio.SocketStream) -> str:
    data = b""
    while b"\r\n" not in data:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        data += chunk
    # Multi-line replies (the admin text) end with OK; the first line is enough here.
    return data.split(b"\r\n", 1)[0].decode(errors="replace")
