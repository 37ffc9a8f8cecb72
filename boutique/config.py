"""Cluster configuration: read a TOML file, check every field, compute the range map.

`load_config(path)` turns a file like `config/cluster.toml` into a frozen
`ClusterConfig`; `single_node_config()` builds the one-node configuration that
`boutique-server` runs with no file. The shipped files in `config/` are the reference
for the format; their comments explain every key.

Every mistake raises `ConfigError` with a message that names the file and the field,
e.g. ``config/cluster.toml: node[2].peer_port: expected an integer 1-65535, got "x"``.
Nodes are counted from 0 in field names, in file order. Unknown keys are errors too,
so a typo never silently falls back to a default.

The cluster secret, strongest first:
  1. the environment variable BOUTIQUE_SECRET, when set and not empty;
  2. `secret_file = "path"`, relative to the config file; surrounding whitespace
     (the trailing newline) is stripped;
  3. `secret = "..."` in the file.
Giving both `secret` and `secret_file` is an error. A cluster of more than one node
must have a secret of at least 16 bytes; a single node without one gets a random
secret (it has no peers to agree with).

Paths of data directories are taken as written, relative to the working directory of
the process: a node keeps its data in its own `data_dir`, else in
`<top-level data_dir>/<node name>` (`data/<node name>` by default).

This module reads files and the environment only when asked to load a configuration;
it never opens sockets or starts anything.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from boutique.registry import DEFAULT_SPLITS, Range, RangeMap, plan_ranges

__all__ = [
    "MIN_SECRET_BYTES",
    "SECRET_ENV",
    "ClusterConfig",
    "ConfigError",
    "NodeConfig",
    "load_config",
    "parse_config",
    "single_node_config",
]

SECRET_ENV: Final = "BOUTIQUE_SECRET"
MIN_SECRET_BYTES: Final = 16
MAX_META_REPLICAS: Final = 5
_MAX_NODE_ID: Final = 2**63 - 1
_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class ConfigError(Exception):
    """A mistake in a configuration. `str()` is the whole message for the user:
    ``<source>: <field>: <problem>``."""

    def __init__(self, source: str, field: str | None, problem: str) -> None:
        self.source = source
        self.field = field
        self.problem = problem
        where = f"{source}: {field}" if field else source
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """One node: `host` is the address the other nodes (and forwarded clients) use
    to reach it; `data_dir` is where it keeps its data (relative paths are relative to
    the working directory of the process)."""

    name: str
    id: int
    host: str
    client_port: int
    peer_port: int
    data_dir: Path
    metrics_port: int | None = None
    """``[[node]] metrics_port``: this node's metrics port, instead of ``[metrics] port``
    (several nodes on one host each need their own). 0: off for this node."""

    @property
    def client_address(self) -> tuple[str, int]:
        return (self.host, self.client_port)

    @property
    def peer_address(self) -> tuple[str, int]:
        return (self.host, self.peer_port)


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """A checked cluster configuration. Times are in seconds unless named ticks.

    `ranges` is computed from `splits`, the nodes and `replication` (see
    `boutique.registry.plan_ranges`): range i is led by node i mod n, then replicated
    on the nodes after it in file order. `meta_replicas` are the node ids of the meta
    (registry) group. `data_dir` is the base each node's default data directory was
    derived from (`data_dir / name`); the node's own `data_dir` is the one to use.
    `secret` and `password` are left out of `repr`.
    """

    cluster_name: str
    secret: bytes = field(repr=False)
    nodes: tuple[NodeConfig, ...]
    splits: tuple[str, ...]
    replication: int
    ranges: tuple[Range, ...]
    meta_replicas: tuple[int, ...]
    data_dir: Path = Path("data")
    tick_interval: float = 0.05
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    snapshot_entries: int = 10_000
    listen_host: str = "127.0.0.1"
    max_line: int = 65_536
    max_connections: int = 1024
    idle_timeout: float = 300.0
    password: str | None = field(default=None, repr=False)
    request_timeout: float = 5.0
    auth_timeout: float = 10.0
    """With a password: seconds a client connection has to authenticate."""
    max_unauthenticated: int = 64
    """With a password: client connections not yet authenticated, at once (they do
    not count against ``max_connections``)."""
    max_unauthenticated_per_address: int = 8
    """With a password: the share of ``max_unauthenticated`` one address may hold."""
    max_reply_bytes: int = 16 * 1024 * 1024
    """Reply bytes one client connection may have waiting to be written."""
    max_total_reply_bytes: int = 256 * 1024 * 1024
    """Reply bytes all client connections together may have waiting to be written."""
    scan_limit: int = 1000
    """Rows a SCAN or KEYS returns when the request names no smaller limit."""
    client_tls: tuple[str, str] | None = None
    """``[server] tls_cert`` and ``tls_key`` (relative to the config file's directory,
    ``{name}`` for the node's name): clients connect over TLS. None: plaintext."""
    fault_injection: bool = False
    """Accept the FAULT command (cut links to peers) for distributed tests. Never on
    in production: anyone who can connect could partition the node."""
    tls_files: tuple[str, str, str] | None = None
    """``[tls]``: the CA, certificate and key paths for mutual TLS between nodes, each
    relative to the config file's directory; ``{name}`` in the certificate and key
    stands for the node's name. None: no TLS (the peer network must be trusted)."""
    unsafe_local_reads: bool = False
    """A deliberately planted bug for the distributed test harness: serve bucket reads
    from a replica's local state without ReadIndex. Never on in production."""
    metrics_port: int = 0
    """``[metrics] port``: serve Prometheus metrics over HTTP there (0: off)."""
    metrics_host: str = "127.0.0.1"
    """``[metrics] host``: the address the metrics endpoint listens on."""
    source: str = "<config>"

    def client_tls_files(self, name: str) -> tuple[Path, Path] | None:
        """The certificate and key the node called ``name`` shows clients (None: no TLS)."""
        if self.client_tls is None:
            return None
        cert, key = self.client_tls
        return Path(cert.replace("{name}", name)), Path(key.replace("{name}", name))

    def peer_tls_files(self, name: str) -> tuple[Path, Path, Path] | None:
        """The CA, certificate and key files of the node called ``name`` (None: no TLS)."""
        if self.tls_files is None:
            return None
        ca, cert, key = self.tls_files
        return Path(ca), Path(cert.replace("{name}", name)), Path(key.replace("{name}", name))

    def metrics_port_of(self, me: NodeConfig) -> int:
        """The port ``me`` serves metrics on (0: none): its own, else ``[metrics] port``."""
        return self.metrics_port if me.metrics_port is None else me.metrics_port

    @property
    def range_map(self) -> RangeMap:
        return RangeMap(self.ranges)

    def node(self, name: str) -> NodeConfig:
        """The node called `name`; `ConfigError` naming the known nodes otherwise."""
        for node in self.nodes:
            if node.name == name:
                return node
        known = ", ".join(node.name for node in self.nodes)
        raise ConfigError(self.source, "node", f"no node named {_show(name)} (nodes: {known})")

    def node_by_id(self, node_id: int) -> NodeConfig:
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise ConfigError(self.source, "node", f"no node with id {node_id}")

    def with_data_dir(self, name: str, data_dir: str | os.PathLike[str]) -> ClusterConfig:
        """A copy with the node called `name` keeping its data in `data_dir` (for a
        command-line override)."""
        target = self.node(name)
        nodes = tuple(
            replace(node, data_dir=Path(data_dir)) if node is target else node
            for node in self.nodes
        )
        return replace(self, nodes=nodes)


_TOP_KEYS = frozenset(
    {
        "cluster_name",
        "secret",
        "secret_file",
        "replication",
        "splits",
        "meta_replicas",
        "data_dir",
        "raft",
        "server",
        "testing",
        "tls",
        "metrics",
        "node",
    }
)
_TLS_KEYS = frozenset({"ca", "cert", "key"})
_RAFT_KEYS = frozenset({"tick_interval", "election_ticks", "heartbeat_ticks", "snapshot_entries"})
_SERVER_KEYS = frozenset(
    {
        "listen_host",
        "max_line",
        "max_connections",
        "idle_timeout",
        "password",
        "request_timeout",
        "auth_timeout",
        "max_unauthenticated",
        "max_unauthenticated_per_address",
        "max_reply_bytes",
        "max_total_reply_bytes",
        "scan_limit",
        "tls_cert",
        "tls_key",
    }
)
_METRICS_KEYS = frozenset({"port", "host"})
_TESTING_KEYS = frozenset({"fault_injection", "unsafe_local_reads"})
_NODE_KEYS = frozenset(
    {"name", "id", "host", "client_port", "peer_port", "data_dir", "metrics_port"}
)

_MISSING: Any = object()


def load_config(
    path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None
) -> ClusterConfig:
    """Read and check the TOML file at `path`. `env` defaults to `os.environ`."""
    source = os.fspath(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(source, None, f"cannot read the file: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(source, f"line {line}", "the file is not valid UTF-8") from None
    return parse_config(text, source, base_dir=Path(path).parent, env=env)


def parse_config(
    text: str,
    source: str = "<string>",
    *,
    base_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> ClusterConfig:
    """Check a configuration given as TOML text. `source` names it in errors;
    `secret_file` is relative to `base_dir` (default: the working directory)."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _toml_error(source, text, exc) from None
    return _Loader(source, base_dir or Path(), os.environ if env is None else env).load(document)


def single_node_config(
    port: int = 4040, data_dir: str | os.PathLike[str] = "./data"
) -> ClusterConfig:
    """One node called "local" (id 1) holding every range, serving clients on `port`
    of 127.0.0.1 and keeping its data directly in `data_dir`, with a random secret.
    Its peer port (unused while it is alone) is `port + 1000` (`port - 1000` if that
    would not be a valid port)."""
    source = "<single node>"
    if type(port) is not int or not 1 <= port <= 65535:
        raise ConfigError(source, "port", f"expected an integer 1-65535, got {_show(port)}")
    peer_port = port + 1000 if port + 1000 <= 65535 else port - 1000
    node = NodeConfig("local", 1, "127.0.0.1", port, peer_port, Path(data_dir))
    ranges = plan_ranges(DEFAULT_SPLITS, [node.id], 1)
    return ClusterConfig(
        cluster_name="boutique",
        secret=secrets.token_bytes(32),
        nodes=(node,),
        splits=DEFAULT_SPLITS,
        replication=1,
        ranges=ranges.ranges,
        meta_replicas=(node.id,),
        source=source,
    )


def _toml_error(source: str, text: str, exc: tomllib.TOMLDecodeError) -> ConfigError:
    message = str(exc)
    match = re.search(r"at line (\d+)", message)
    if match is None:
        return ConfigError(source, None, f"invalid TOML: {message}")
    number = int(match.group(1))
    lines = text.splitlines()
    shown = lines[number - 1].strip() if 0 < number <= len(lines) else ""
    return ConfigError(source, f"line {number}", f"invalid TOML: {message}: {shown}")


def _show(value: object) -> str:
    """A value as the user wrote it in TOML, for error messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= 60 else text[:56] + '..."'
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return f"a {type(value).__name__}"


class _Table:
    """One TOML table being checked: typed getters that name the field in errors,
    and a check for keys nobody asked about (typos)."""

    def __init__(
        self, source: str, prefix: str, data: dict[str, Any], allowed: frozenset[str]
    ) -> None:
        self.source = source
        self.prefix = prefix
        self.data = data
        for key in data:
            if key not in allowed:
                raise ConfigError(source, self.name(key), _unknown_key_hint(key, allowed))

    def name(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.source, self.name(key), problem)

    def get(self, key: str, default: Any = _MISSING) -> Any:
        if key in self.data:
            return self.data[key]
        if default is _MISSING:
            raise self.error(key, "missing (this field is required)")
        return default

    def string(self, key: str, default: Any = _MISSING) -> Any:
        value = self.get(key, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, str):
            raise self.error(key, f"expected a string, got {_show(value)}")
        if not value.strip():
            raise self.error(key, "must not be empty")
        return value

    def integer(self, key: str, low: int, high: int | None, default: Any = _MISSING) -> Any:
        value = self.get(key, default)
        if value is default and default is not _MISSING:
            return value
        if type(value) is not int or value < low or (high is not None and value > high):
            span = f"{low}-{high}" if high is not None else f">= {low}"
            raise self.error(key, f"expected an integer {span}, got {_show(value)}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {_show(value)}")
        return value

    def seconds(self, key: str, default: float, *, zero_ok: bool = False) -> float:
        value = self.get(key, default)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
            or (value == 0 and not zero_ok)
        ):
            wanted = "a number of seconds >= 0" if zero_ok else "a number of seconds > 0"
            raise self.error(key, f"expected {wanted}, got {_show(value)}")
        return float(value)

    def subtable(self, key: str, allowed: frozenset[str]) -> _Table:
        value = self.get(key, {})
        if not isinstance(value, dict):
            raise self.error(key, f"expected a table ([{key}]), got {_show(value)}")
        return _Table(self.source, f"{self.name(key)}.", value, allowed)


def _unknown_key_hint(key: str, allowed: frozenset[str]) -> str:
    close = difflib.get_close_matches(key, sorted(allowed), n=1)
    if close:
        return f"unknown key (did you mean {_show(close[0])}?)"
    if key in _TOP_KEYS:
        return (
            "unknown key here: top-level keys must come before the first [table] header, "
            "or TOML puts them in that table"
        )
    return f"unknown key (known keys: {', '.join(sorted(allowed))})"


class _Loader:
    def __init__(self, source: str, base_dir: Path, env: Mapping[str, str]) -> None:
        self.source = source
        self.base_dir = base_dir
        self.env = env

    def load(self, document: dict[str, Any]) -> ClusterConfig:
        top = _Table(self.source, "", document, _TOP_KEYS)
        raft = top.subtable("raft", _RAFT_KEYS)
        server = top.subtable("server", _SERVER_KEYS)
        testing = top.subtable("testing", _TESTING_KEYS)
        tls = top.subtable("tls", _TLS_KEYS)
        metrics = top.subtable("metrics", _METRICS_KEYS)
        metrics_host = metrics.string("host", "127.0.0.1")
        if any(c.isspace() for c in metrics_host):
            raise metrics.error(
                "host", f"expected a host name or address, got {_show(metrics_host)}"
            )
        base_dir = Path(top.string("data_dir", "data"))
        nodes = self.nodes(top, base_dir)
        node_ids = [node.id for node in nodes]

        replication = top.integer("replication", 1, None, min(3, len(nodes)))
        if replication > len(nodes):
            raise top.error(
                "replication",
                f"expected an integer 1-{len(nodes)} (the number of nodes), got {replication}",
            )
        splits = self.splits(top)
        ranges = plan_ranges(splits, node_ids, replication)

        election_ticks = raft.integer("election_ticks", 2, None, 10)
        heartbeat_ticks = raft.integer("heartbeat_ticks", 1, None, 1)
        if election_ticks <= heartbeat_ticks:
            raise raft.error(
                "election_ticks",
                f"must be greater than raft.heartbeat_ticks ({heartbeat_ticks}), "
                f"got {election_ticks}",
            )

        password = server.string("password", None)
        max_unauthenticated = server.integer("max_unauthenticated", 1, None, 64)
        per_address = server.integer("max_unauthenticated_per_address", 1, None, 8)
        if per_address > max_unauthenticated:
            raise server.error(
                "max_unauthenticated_per_address",
                f"must be at most server.max_unauthenticated ({max_unauthenticated}), "
                f"got {per_address}",
            )
        max_line = server.integer("max_line", 64, None, 65_536)
        max_reply_bytes = server.integer("max_reply_bytes", 4 * max_line, None, 16 << 20)
        max_total = server.integer("max_total_reply_bytes", 1, None, 256 << 20)
        if max_total < max_reply_bytes:
            raise server.error(
                "max_total_reply_bytes",
                f"must be at least server.max_reply_bytes ({max_reply_bytes}), got {max_total}",
            )
        return ClusterConfig(
            cluster_name=top.string("cluster_name", "boutique"),
            secret=self.secret(top, len(nodes)),
            nodes=nodes,
            splits=splits,
            replication=replication,
            ranges=ranges.ranges,
            meta_replicas=self.meta_replicas(top, nodes),
            data_dir=base_dir,
            tick_interval=raft.seconds("tick_interval", 0.05),
            election_ticks=election_ticks,
            heartbeat_ticks=heartbeat_ticks,
            snapshot_entries=raft.integer("snapshot_entries", 1, None, 10_000),
            listen_host=server.string("listen_host", "127.0.0.1"),
            max_line=max_line,
            max_connections=server.integer("max_connections", 1, None, 1024),
            idle_timeout=server.seconds("idle_timeout", 300.0, zero_ok=True),
            password=password,
            request_timeout=server.seconds("request_timeout", 5.0),
            auth_timeout=server.seconds("auth_timeout", 10.0),
            max_unauthenticated=max_unauthenticated,
            max_unauthenticated_per_address=per_address,
            max_reply_bytes=max_reply_bytes,
            max_total_reply_bytes=max_total,
            scan_limit=server.integer("scan_limit", 1, None, 1000),
            client_tls=self.client_tls(server),
            fault_injection=testing.boolean("fault_injection", False),
            unsafe_local_reads=testing.boolean("unsafe_local_reads", False),
            tls_files=self.tls_files(tls),
            metrics_port=metrics.integer("port", 0, 65535, 0),
            metrics_host=metrics_host,
            source=self.source,
        )

    def nodes(self, top: _Table, base_dir: Path) -> tuple[NodeConfig, ...]:
        tables = top.get("node", [])
        if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
            raise top.error("node", "expected an array of tables, written [[node]]")
        if not tables:
            raise top.error("node", "missing: describe at least one node in a [[node]] table")
        nodes: list[NodeConfig] = []
        names: dict[str, str] = {}
        ids: dict[int, str] = {}
        ports: dict[tuple[str, int], str] = {}
        for i, data in enumerate(tables):
            table = _Table(self.source, f"node[{i}].", data, _NODE_KEYS)
            name = table.string("name")
            if not _NODE_NAME.fullmatch(name):
                raise table.error(
                    "name",
                    "expected 1-64 letters, digits, '.', '_' or '-', starting with a letter "
                    f"or digit, got {_show(name)}",
                )
            if name in names:
                raise table.error("name", f"{_show(name)} is already the name of {names[name]}")
            names[name] = f"node[{i}]"
            node_id = table.integer("id", 1, _MAX_NODE_ID)
            if node_id in ids:
                raise table.error("id", f"{node_id} is already the id of {ids[node_id]}")
            ids[node_id] = names[name]
            host = table.string("host")
            if any(c.isspace() for c in host):
                raise table.error("host", f"expected a host name or address, got {_show(host)}")
            client_port = table.integer("client_port", 1, 65535)
            peer_port = table.integer("peer_port", 1, 65535)
            for key, port in (("client_port", client_port), ("peer_port", peer_port)):
                owner = ports.get((host, port))
                if owner is not None:
                    raise table.error(key, f"port {port} on {host} is already {owner}")
                ports[(host, port)] = table.name(key)
            metrics_port = table.integer("metrics_port", 0, 65535, None)
            if metrics_port:
                owner = ports.get((host, metrics_port))
                if owner is not None:
                    raise table.error(
                        "metrics_port", f"port {metrics_port} on {host} is already {owner}"
                    )
                ports[(host, metrics_port)] = table.name("metrics_port")
            data_dir = table.string("data_dir", None)
            nodes.append(
                NodeConfig(
                    name,
                    node_id,
                    host,
                    client_port,
                    peer_port,
                    base_dir / name if data_dir is None else Path(data_dir),
                    metrics_port,
                )
            )
        return tuple(nodes)

    def splits(self, top: _Table) -> tuple[str, ...]:
        value = top.get("splits", list(DEFAULT_SPLITS))
        if not isinstance(value, list):
            raise top.error("splits", f"expected an array of strings, got {_show(value)}")
        for i, split in enumerate(value):
            key = f"splits[{i}]"
            if not isinstance(split, str) or not split:
                raise top.error(key, f"expected a non-empty string, got {_show(split)}")
            # str order is code point order, the same as the UTF-8 byte order of names.
            if i and split <= value[i - 1]:
                raise top.error(
                    key,
                    f"{_show(split)} must come after {_show(value[i - 1])}: "
                    "split points are sorted and distinct",
                )
        return tuple(value)

    def meta_replicas(self, top: _Table, nodes: tuple[NodeConfig, ...]) -> tuple[int, ...]:
        by_name = {node.name: node.id for node in nodes}
        value = top.get("meta_replicas", None)
        if value is None:
            return tuple(node.id for node in nodes[:MAX_META_REPLICAS])
        if not isinstance(value, list) or not value:
            raise top.error("meta_replicas", f"expected an array of node names, got {_show(value)}")
        chosen: list[int] = []
        for i, name in enumerate(value):
            key = f"meta_replicas[{i}]"
            if not isinstance(name, str) or name not in by_name:
                raise top.error(key, f"no node named {_show(name)}")
            if by_name[name] in chosen:
                raise top.error(key, f"{_show(name)} is listed twice")
            chosen.append(by_name[name])
        return tuple(chosen)

    def secret(self, top: _Table, node_count: int) -> bytes:
        in_file = top.get("secret", None)
        secret_file = top.get("secret_file", None)
        if in_file is not None and secret_file is not None:
            raise top.error("secret_file", "give either secret or secret_file, not both")
        if in_file is not None and not isinstance(in_file, str):
            raise top.error("secret", f"expected a string, got {_show(in_file)}")
        if secret_file is not None and (not isinstance(secret_file, str) or not secret_file):
            raise top.error("secret_file", f"expected a path, got {_show(secret_file)}")
        from_env = self.env.get(SECRET_ENV, "")
        if from_env:
            secret = from_env.encode("utf-8")
            where = f"{SECRET_ENV} (environment variable)"
        elif secret_file is not None:
            secret = self.read_secret_file(top, secret_file)
            where = "secret_file"
        elif in_file is not None:
            secret = in_file.encode("utf-8")
            where = "secret"
        elif node_count == 1:
            return secrets.token_bytes(32)
        else:
            raise top.error(
                "secret",
                f"missing: a cluster of {node_count} nodes needs a shared secret "
                f"(secret, secret_file or the {SECRET_ENV} environment variable)",
            )
        if len(secret) < MIN_SECRET_BYTES:
            raise ConfigError(
                self.source,
                where,
                f"the secret must be at least {MIN_SECRET_BYTES} bytes, got {len(secret)}",
            )
        return secret

    def client_tls(self, server: _Table) -> tuple[str, str] | None:
        cert, key = server.string("tls_cert", None), server.string("tls_key", None)
        if cert is None and key is None:
            return None
        if cert is None or key is None:
            missing = "tls_cert" if cert is None else "tls_key"
            raise server.error(missing, "missing: TLS for clients needs tls_cert and tls_key")
        return str(self.base_dir / cert), str(self.base_dir / key)

    def tls_files(self, tls: _Table) -> tuple[str, str, str] | None:
        given = {key: tls.string(key, None) for key in ("ca", "cert", "key")}
        if all(value is None for value in given.values()):
            return None
        for key, value in given.items():
            if value is None:
                raise tls.error(key, "missing: TLS needs all of ca, cert and key")
        return (
            str(self.base_dir / given["ca"]),
            str(self.base_dir / given["cert"]),
            str(self.base_dir / given["key"]),
        )

    def read_secret_file(self, top: _Table, value: str) -> bytes:
        path = self.base_dir / value
        try:
            return path.read_bytes().strip()
        except OSError as exc:
            raise top.error("secret_file", f"cannot read {path}: {exc.strerror or exc}") from None
