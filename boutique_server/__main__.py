"""``boutique-server``: run one node, or every node of a config on this machine.

boutique-server                                   one node, all ranges, port 4040, ./data
boutique-server --config config/cluster.toml --node a-g
boutique-server --config config/cluster.toml --all   every node here; Ctrl-C stops all
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import trio

from boutique.config import ClusterConfig, ConfigError, NodeConfig, load_config, single_node_config
from boutique.runtime.join import register
from boutique.runtime.node import Node
from boutique.runtime.peertls import PeerTLSError
from boutique.runtime.router import Router
from boutique.storage.errors import DataFileError

from .server import LineServer

log = logging.getLogger("boutique")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="boutique-server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, help="a cluster config (TOML)")
    parser.add_argument("--node", help="which node of the config to run")
    parser.add_argument("--all", action="store_true", help="run every node of the config here")
    parser.add_argument("--port", type=int, help="client port (default: from config, 4040)")
    parser.add_argument("--peer-port", type=int, help="peer port (default: from config)")
    parser.add_argument("--data-dir", type=Path, help="data directory of this node")
    parser.add_argument("--host", help="address to listen on for clients (default 127.0.0.1)")
    parser.add_argument(
        "--join",
        action="store_true",
        help="join the running cluster of --config as a new node (needs --name and --id)",
    )
    parser.add_argument("--name", help="this node's name, with --join")
    parser.add_argument("--id", type=int, help="this node's id, with --join")
    parser.add_argument("--log-level", default=os.environ.get("BOUTIQUE_LOG", "INFO"))
    return parser.parse_args(argv)


def _choose(args: argparse.Namespace) -> tuple[ClusterConfig, NodeConfig]:
    if args.config is None:
        config = single_node_config(port=args.port or 4040, data_dir=args.data_dir or Path("data"))
        me = config.nodes[0]
    elif args.join:
        config = load_config(args.config)
        if not args.name or not args.id or not args.port or not args.peer_port:
            raise ConfigError(
                str(args.config), "--join", "needs --name, --id, --port and --peer-port"
            )
        if any(n.name == args.name or n.id == args.id for n in config.nodes):
            raise ConfigError(str(args.config), "--join", "name or id already in the config")
        me = NodeConfig(
            args.name,
            args.id,
            args.host or config.listen_host,
            args.port,
            args.peer_port,
            args.data_dir or config.data_dir / args.name,
        )
        return config, me
    else:
        config = load_config(args.config)
        if not args.node:
            names = ", ".join(n.name for n in config.nodes)
            raise ConfigError(
                str(args.config), "--node", f"name the node to run ({names}), or use --all"
            )
        me = config.node(args.node)
        if args.data_dir:
            config = config.with_data_dir(me.name, args.data_dir)
            me = config.node(args.node)
    overrides = {}
    if args.port and args.config is not None:
        overrides["client_port"] = args.port
    if args.peer_port:
        overrides["peer_port"] = args.peer_port
    if overrides:
        import dataclasses

        me = dataclasses.replace(me, **overrides)
        config = dataclasses.replace(
            config, nodes=tuple(me if n.id == me.id else n for n in config.nodes)
        )
    if args.host:
        import dataclasses

        config = dataclasses.replace(config, listen_host=args.host)
    return config, me


async def serve(config: ClusterConfig, me: NodeConfig, *, join: bool = False) -> None:
    async with trio.open_nursery() as nursery:
        node: Node = await nursery.start(Node(config, me).run)
        if join:
            nursery.start_soon(register, config, me)
        router = Router(node)
        server = LineServer(config, me, node, router)
        port = await nursery.start(server.serve)
        log.info(
            "node %s serving clients on %s:%d (peers on %s:%d, data in %s)",
            me.name,
            config.listen_host,
            port,
            me.host,
            node.peer_port,
            me.data_dir,
        )
        print(f"boutique node {me.name} ready on {config.listen_host}:{port}", flush=True)


def _run_all(config_path: Path, args: argparse.Namespace) -> int:
    """Start every node of the config as a child process; stop them all on Ctrl-C."""
    config = load_config(config_path)
    children = []
    try:
        for node in config.nodes:
            cmd = [
                sys.executable,
                "-m",
                "boutique_server",
                "--config",
                str(config_path),
                "--node",
                node.name,
                "--log-level",
                args.log_level,
            ]
            children.append(subprocess.Popen(cmd))
        while all(child.poll() is None for child in children):
            try:
                children[0].wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                continue
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGINT)
        for child in children:
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def _sole_cause(group: BaseExceptionGroup[BaseException]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.all:
            if args.config is None:
                print("boutique-server: --all needs --config", file=sys.stderr)
                return 2
            return _run_all(args.config, args)
        config, me = _choose(args)
        try:
            trio.run(partial(serve, join=args.join), config, me)
        except BaseExceptionGroup as group:
            # Startup failures surface through trio's nurseries wrapped in groups; a
            # lone cause is reported as itself.
            raise _sole_cause(group) from None
    except ConfigError as exc:
        print(f"boutique-server: {exc}", file=sys.stderr)
        return 2
    except PeerTLSError as exc:
        print(f"boutique-server: tls: {exc}", file=sys.stderr)
        return 2
    except DataFileError as exc:
        print(f"boutique-server: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        print(f"boutique-server: {exc}", file=sys.stderr)
        return 4
    return 0


if __name__ == "__main__":
    sys.exit(main())
