"""``boutique-server``: run one node, or every node of a config on this machine.

This module is the command line only: it validates every flag (a mistake gets one
line naming the flag and exit code 2, never a traceback), sets up logging and hands
over to ``process.serve`` (one node) or ``supervisor.run_all`` (``--all``). It must
never let a flag be silently ignored.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from functools import partial
from pathlib import Path

import trio

from boutique.command_line import add_version, package_version
from boutique.config import ClusterConfig, ConfigError, NodeConfig, load_config, single_node_config
from boutique.runtime.gcpolicy import FreezeSurvivors
from boutique.runtime.peertls import PeerTLSError
from boutique.storage.errors import DataFileError

from .process import StartupError, holding_stop_signals, serve, stop_signals, stopped_line
from .supervisor import EXIT_REMOVED, run_all

log = logging.getLogger("boutique")

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DEFAULT_PORT = 4040

DESCRIPTION = """\
Run a boutique node: a strongly consistent, sharded key-value store spoken to over
a line protocol (telnet or nc).

  boutique-server                                       one node, all ranges,
                                                        127.0.0.1:4040, data in ./data
  boutique-server --config config/cluster.toml --node a-g
                                                        one node of a cluster
  boutique-server --config config/cluster.toml --all    every node of the config on
                                                        this machine, restarted if one
                                                        dies
  boutique-server --config config/cluster.toml --join --name e --id 5 \\
                  --port 4044 --peer-port 5044          a new node joining a cluster

SIGTERM or Ctrl-C stops a node gracefully: it hands over leadership, answers the
requests it has taken on, closes its storage and exits 0. A second signal stops it
at once.
"""

EPILOG = """\
environment variables:
  BOUTIQUE_LOG      default log level (DEBUG, INFO, WARNING, ERROR); --log-level wins
  BOUTIQUE_SECRET   the cluster secret; when set and not empty it wins over secret
                    and secret_file of the config

exit codes:
  0  stopped gracefully        2  bad flag or configuration
  1  stopped, but not cleanly  3  unreadable data file     4  cannot listen or start
  5  removed from the cluster (ADMIN REMOVE-NODE): drained and stopped; data kept
"""


class UsageError(Exception):
    """A flag is wrong; ``str()`` names it."""


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number 1-65535, got {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 1-65535, got {port}")
    return port


def _node_id(text: str) -> int:
    try:
        node_id = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if node_id < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {node_id}")
    return node_id


def _nonempty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="boutique-server",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_version(parser)
    parser.add_argument("--config", type=Path, help="a cluster config file (TOML)")
    parser.add_argument("--node", type=_nonempty, help="which node of the config to run")
    parser.add_argument(
        "--all", action="store_true", help="run every node of the config here, supervised"
    )
    parser.add_argument(
        "--port", type=_port, help=f"client port (default: from the config, or {DEFAULT_PORT})"
    )
    parser.add_argument("--peer-port", type=_port, help="peer port (default: from the config)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="data directory of this node (with --all: a base directory, one "
        "subdirectory per node)",
    )
    parser.add_argument(
        "--host", type=_nonempty, help="address to listen on for clients (default 127.0.0.1)"
    )
    parser.add_argument(
        "--join",
        action="store_true",
        help="join the running cluster of --config as a new node (needs --name, --id, "
        "--port and --peer-port)",
    )
    parser.add_argument("--name", type=_nonempty, help="this node's name, with --join")
    parser.add_argument("--id", type=_node_id, help="this node's id, with --join")
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default=None,
        help="how much to log (default: BOUTIQUE_LOG, else INFO)",
    )
    return parser


def check_flags(args: argparse.Namespace) -> None:
    """Refuse combinations that would otherwise be ignored silently."""
    if args.config is None:
        needing = [
            flag
            for flag, value in (
                ("--node", args.node),
                ("--all", args.all),
                ("--join", args.join),
                ("--peer-port", args.peer_port),
                ("--name", args.name),
                ("--id", args.id),
            )
            if value
        ]
        if needing:
            raise UsageError(f"{needing[0]} needs --config (a cluster config file)")
    modes = [
        flag
        for flag, on in (("--node", args.node), ("--all", args.all), ("--join", args.join))
        if on
    ]
    if len(modes) > 1:
        raise UsageError(f"{modes[0]} and {modes[1]} cannot be used together")
    if not args.join and (args.name or args.id):
        raise UsageError(f"{'--name' if args.name else '--id'} is only for --join")
    if args.all and (args.port or args.peer_port):
        flag = "--port" if args.port else "--peer-port"
        raise UsageError(
            f"{flag} names one node's port; with --all every node's ports come from the config"
        )


def log_level(args: argparse.Namespace) -> str:
    if args.log_level is not None:
        return str(args.log_level)
    env = os.environ.get("BOUTIQUE_LOG", "INFO").upper()
    if env not in LOG_LEVELS:
        raise UsageError(f"BOUTIQUE_LOG: expected one of {', '.join(LOG_LEVELS)}, got {env!r}")
    return env


def choose(args: argparse.Namespace) -> tuple[ClusterConfig, NodeConfig]:
    """The cluster config and the node to run, with the flags applied."""
    if args.config is None:
        config = single_node_config(
            port=args.port or DEFAULT_PORT, data_dir=args.data_dir or Path("data")
        )
        me = config.nodes[0]
    elif args.join:
        config = load_config(args.config)
        missing = [
            flag
            for flag, value in (
                ("--name", args.name),
                ("--id", args.id),
                ("--port", args.port),
                ("--peer-port", args.peer_port),
            )
            if not value
        ]
        if missing:
            raise UsageError(f"--join needs {', '.join(missing)}")
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
        me = dataclasses.replace(me, **overrides)
        config = dataclasses.replace(
            config, nodes=tuple(me if n.id == me.id else n for n in config.nodes)
        )
    if args.host:
        config = dataclasses.replace(config, listen_host=args.host)
    return config, me


def _sole_cause(group: BaseExceptionGroup[BaseException]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _role(args: argparse.Namespace) -> str:
    if args.config is None:
        return "single node"
    return "joining node" if args.join else "cluster node"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_flags(args)
        level = log_level(args)
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"boutique-server: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    source = str(args.config) if args.config is not None else "<single node>"
    try:
        if args.all:
            config = load_config(args.config)
            log.info(
                "boutique-server %s pid %d config %s: supervising every node (--all)",
                package_version(),
                os.getpid(),
                source,
            )
            return run_all(
                config,
                args.config,
                log_level=level,
                data_dir=args.data_dir,
                host=args.host,
                signals=stop_signals(),
            )
        with holding_stop_signals():
            config, me = choose(args)
            log.info(
                "boutique-server %s pid %d config %s: node %s (id %d), %s",
                package_version(),
                os.getpid(),
                source,
                me.name,
                me.id,
                _role(args),
            )
            # Full collections must not walk every bucket's objects again and again.
            FreezeSurvivors().install()
            try:
                stopped = trio.run(partial(serve, join=args.join, source=source), config, me)
            except BaseExceptionGroup as group:
                # Startup failures surface through trio's nurseries wrapped in groups;
                # a lone cause is reported as itself.
                raise _sole_cause(group) from None
    except UsageError as exc:
        print(f"boutique-server: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"boutique-server: {exc}", file=sys.stderr)
        return 2
    except PeerTLSError as exc:
        print(f"boutique-server: tls: {exc}", file=sys.stderr)
        return 2
    except DataFileError as exc:
        print(f"boutique-server: {exc}", file=sys.stderr)
        return 3
    except StartupError as exc:
        print(f"boutique-server: {exc}", file=sys.stderr)
        return 4
    except OSError as exc:
        print(f"boutique-server: {source}: {exc}", file=sys.stderr)
        return 4
    except KeyboardInterrupt:
        return 1  # Ctrl-C before the node could handle it
    log.info(stopped_line(me, stopped))
    if stopped.removed:
        return EXIT_REMOVED
    return 0 if stopped.report is not None else 1


if __name__ == "__main__":
    sys.exit(main())
