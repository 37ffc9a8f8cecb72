"""Configuration files: the shipped ones load, every mistake names its field, ranges
are assigned as documented, and the secret comes from where the docs say."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from boutique.config import (
    ClusterConfig,
    ConfigError,
    NodeConfig,
    load_config,
    parse_config,
    single_node_config,
)
from boutique.registry import RangeMap

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
SECRET = "0123456789abcdef-test"
NO_ENV: dict[str, str] = {}

NODES = """
[[node]]
name = "n1"
id = 1
host = "127.0.0.1"
client_port = 4041
peer_port = 5041

[[node]]
name = "n2"
id = 2
host = "127.0.0.1"
client_port = 4042
peer_port = 5042

[[node]]
name = "n3"
id = 3
host = "127.0.0.1"
client_port = 4043
peer_port = 5043
"""

BASE = f'secret = "{SECRET}"\n' + NODES


def parse(text: str, env: dict[str, str] = NO_ENV) -> ClusterConfig:
    return parse_config(text, "test.toml", env=env)


# The shipped files


def test_cluster_toml_loads() -> None:
    config = load_config(CONFIG_DIR / "cluster.toml", env=NO_ENV)
    assert [n.name for n in config.nodes] == ["a-g", "h-n", "o-u", "v-z"]
    assert [n.client_port for n in config.nodes] == [4041, 4042, 4043, 4044]
    assert [n.peer_port for n in config.nodes] == [5041, 5042, 5043, 5044]
    assert {n.host for n in config.nodes} == {"127.0.0.1"}
    assert config.replication == 3
    assert config.splits == ("h", "o", "v")
    assert len(config.secret) >= 16
    # Each node is the preferred leader of the range it is named after.
    for node, range_ in zip(config.nodes, config.ranges, strict=True):
        assert range_.id == node.name
        assert range_.preferred_leader == node.id
    assert config.meta_replicas == (1, 2, 3, 4)
    assert config.node("o-u").data_dir == Path("data/o-u")


def test_cluster_ranges_four_nodes_rf3() -> None:
    config = load_config(CONFIG_DIR / "cluster.toml", env=NO_ENV)
    assert [(r.id, r.start, r.end, r.replicas, r.preferred_leader) for r in config.ranges] == [
        ("a-g", "", "h", (1, 2, 3), 1),
        ("h-n", "h", "o", (2, 3, 4), 2),
        ("o-u", "o", "v", (3, 4, 1), 3),
        ("v-z", "v", None, (4, 1, 2), 4),
    ]
    assert config.range_map.range_for("Zebra").id == "a-g"


def test_single_toml_matches_single_node_config() -> None:
    loaded = load_config(CONFIG_DIR / "single.toml", env=NO_ENV)
    built = single_node_config()
    assert len(loaded.secret) == len(built.secret) == 32  # random: nothing to agree with
    assert dataclasses.replace(loaded, secret=b"", source="") == dataclasses.replace(
        built, secret=b"", source=""
    )
    assert loaded.node("local").data_dir == Path("data")
    assert [r.replicas for r in loaded.ranges] == [(1,)] * 4


def test_single_node_config_options() -> None:
    config = single_node_config(port=7000, data_dir="/tmp/x")
    assert config.nodes == (NodeConfig("local", 1, "127.0.0.1", 7000, 8000, Path("/tmp/x")),)
    assert single_node_config(port=65000).nodes[0].peer_port == 64000
    assert single_node_config().secret != single_node_config().secret
    with pytest.raises(ConfigError, match="port"):
        single_node_config(port=0)


def test_defaults() -> None:
    config = parse(BASE)
    assert config.cluster_name == "boutique"
    assert config.replication == 3
    assert config.splits == ("h", "o", "v")
    assert config.meta_replicas == (1, 2, 3)
    assert config.data_dir == Path("data")
    assert (config.tick_interval, config.election_ticks, config.heartbeat_ticks) == (0.05, 10, 1)
    assert config.snapshot_entries == 10_000
    assert (config.listen_host, config.max_line, config.max_connections) == (
        "127.0.0.1",
        65536,
        1024,
    )
    assert (config.idle_timeout, config.password, config.request_timeout) == (300.0, None, 5.0)


def test_secrets_stay_out_of_repr() -> None:
    config = parse(BASE + '\n[server]\npassword = "hunter2hunter2"\n')
    assert config.password == "hunter2hunter2"
    assert SECRET not in repr(config)
    assert "hunter2" not in repr(config)


def test_options_are_read() -> None:
    config = parse(
        """
        cluster_name = "prod"
        replication = 2
        splits = ["m"]
        meta_replicas = ["n3", "n1"]
        data_dir = "/var/lib/boutique"
        """
        + BASE.replace("peer_port = 5043", 'peer_port = 5043\ndata_dir = "elsewhere"')
        + """
        [raft]
        tick_interval = 0.1
        election_ticks = 20
        heartbeat_ticks = 2
        snapshot_entries = 5
        [server]
        listen_host = "0.0.0.0"
        max_line = 1024
        max_connections = 10
        idle_timeout = 0
        request_timeout = 2.5
        """
    )
    assert config.cluster_name == "prod"
    assert [(r.id, r.replicas) for r in config.ranges] == [("a-l", (1, 2)), ("m-z", (2, 3))]
    assert config.meta_replicas == (3, 1)
    assert config.node("n1").data_dir == Path("/var/lib/boutique/n1")
    assert config.node("n3").data_dir == Path("elsewhere")
    assert (config.tick_interval, config.election_ticks, config.heartbeat_ticks) == (0.1, 20, 2)
    assert config.snapshot_entries == 5
    assert (config.listen_host, config.max_line, config.max_connections) == ("0.0.0.0", 1024, 10)
    assert (config.idle_timeout, config.request_timeout) == (0.0, 2.5)


def test_meta_replicas_default_to_five() -> None:
    nodes = "".join(
        f'[[node]]\nname = "n{i}"\nid = {i}\nhost = "h"\nclient_port = {4000 + i}\n'
        f"peer_port = {5000 + i}\n"
        for i in range(1, 8)
    )
    config = parse(f'secret = "{SECRET}"\n' + nodes)
    assert config.meta_replicas == (1, 2, 3, 4, 5)


def test_data_dir_override() -> None:
    config = parse(BASE).with_data_dir("n2", "/srv/n2")
    assert [n.data_dir for n in config.nodes] == [
        Path("data/n1"),
        Path("/srv/n2"),
        Path("data/n3"),
    ]
    with pytest.raises(ConfigError, match="no node named"):
        config.with_data_dir("n9", "x")


def test_node_lookup() -> None:
    config = parse(BASE)
    assert config.node("n2").id == 2
    assert config.node_by_id(3).name == "n3"
    with pytest.raises(
        ConfigError, match=r'test.toml: node: no node named "n9" \(nodes: n1, n2, n3\)'
    ):
        config.node("n9")
    with pytest.raises(ConfigError):
        config.node_by_id(9)


# Broken configurations: (what to change in BASE, the field named, a word of the message)

BROKEN: list[tuple[str, str, str, str]] = [
    # (description, text, field, message fragment)
    ("typo at top", "replicaton = 3\n" + BASE, "replicaton", 'did you mean "replication"'),
    (
        "typo in node",
        BASE.replace("peer_port = 5042", "peer_prot = 5042"),
        "node[1].peer_prot",
        'did you mean "peer_port"',
    ),
    ("typo in raft", BASE + "[raft]\nelection_tick = 5\n", "raft.election_tick", "election_ticks"),
    ("typo in server", BASE + "[server]\nmaxline = 5\n", "server.maxline", "max_line"),
    (
        "key after table",
        BASE + "[server]\nreplication = 2\n",
        "server.replication",
        "before the first [table]",
    ),
    ("unknown key", BASE + "[server]\nflavour = 1\n", "server.flavour", "unknown key"),
    ("missing name", BASE.replace('name = "n2"\n', ""), "node[1].name", "missing"),
    ("missing id", BASE.replace("id = 3\n", ""), "node[2].id", "missing"),
    (
        "missing host",
        BASE.replace('host = "127.0.0.1"\nclient_port = 4041', "client_port = 4041"),
        "node[0].host",
        "missing",
    ),
    ("missing peer port", BASE.replace("peer_port = 5043\n", ""), "node[2].peer_port", "missing"),
    (
        "port as string",
        BASE.replace("peer_port = 5043", 'peer_port = "x"'),
        "node[2].peer_port",
        'expected an integer 1-65535, got "x"',
    ),
    (
        "port too big",
        BASE.replace("client_port = 4041", "client_port = 70000"),
        "node[0].client_port",
        "got 70000",
    ),
    (
        "port zero",
        BASE.replace("client_port = 4041", "client_port = 0"),
        "node[0].client_port",
        "1-65535",
    ),
    (
        "port as float",
        BASE.replace("client_port = 4041", "client_port = 4041.0"),
        "node[0].client_port",
        "got 4041.0",
    ),
    (
        "port as bool",
        BASE.replace("client_port = 4041", "client_port = true"),
        "node[0].client_port",
        "got true",
    ),
    ("id zero", BASE.replace("id = 1\n", "id = 0\n"), "node[0].id", "expected an integer"),
    ("id string", BASE.replace("id = 1\n", 'id = "1"\n'), "node[0].id", 'got "1"'),
    (
        "duplicate name",
        BASE.replace('name = "n2"', 'name = "n1"'),
        "node[1].name",
        "already the name of node[0]",
    ),
    ("duplicate id", BASE.replace("id = 3", "id = 1"), "node[2].id", "already the id of node[0]"),
    (
        "duplicate port",
        BASE.replace("peer_port = 5042", "peer_port = 5041"),
        "node[1].peer_port",
        "already node[0].peer_port",
    ),
    (
        "client = peer port",
        BASE.replace("peer_port = 5041", "peer_port = 4041"),
        "node[0].peer_port",
        "already node[0].client_port",
    ),
    (
        "bad node name",
        BASE.replace('name = "n2"', 'name = "two words"'),
        "node[1].name",
        "letters, digits",
    ),
    ("empty node name", BASE.replace('name = "n2"', 'name = ""'), "node[1].name", "empty"),
    (
        "empty host",
        BASE.replace('host = "127.0.0.1"\nclient_port = 4042', 'host = ""\nclient_port = 4042'),
        "node[1].host",
        "empty",
    ),
    ("no nodes", f'secret = "{SECRET}"\n', "node", "at least one"),
    ("node not array", f'secret = "{SECRET}"\n[node]\nname = "x"\n', "node", "[[node]]"),
    (
        "replication too big",
        "replication = 4\n" + BASE,
        "replication",
        "1-3 (the number of nodes), got 4",
    ),
    ("replication zero", "replication = 0\n" + BASE, "replication", "got 0"),
    ("replication string", 'replication = "3"\n' + BASE, "replication", 'got "3"'),
    ("unsorted splits", 'splits = ["o", "h"]\n' + BASE, "splits[1]", "sorted"),
    ("duplicate splits", 'splits = ["h", "h"]\n' + BASE, "splits[1]", "distinct"),
    ("empty split", 'splits = [""]\n' + BASE, "splits[0]", "non-empty string"),
    ("split not string", "splits = [1]\n" + BASE, "splits[0]", "got 1"),
    ("splits not array", 'splits = "hov"\n' + BASE, "splits", "array"),
    (
        "meta unknown node",
        'meta_replicas = ["n1", "n9"]\n' + BASE,
        "meta_replicas[1]",
        'no node named "n9"',
    ),
    ("meta twice", 'meta_replicas = ["n1", "n1"]\n' + BASE, "meta_replicas[1]", "twice"),
    ("meta empty", "meta_replicas = []\n" + BASE, "meta_replicas", "array of node names"),
    ("no secret", NODES, "secret", "needs a shared secret"),
    ("short secret", 'secret = "short"\n' + NODES, "secret", "at least 16 bytes, got 5"),
    ("secret not string", "secret = 12345678901234567890\n" + NODES, "secret", "expected a string"),
    ("secret and file", 'secret_file = "s"\n' + BASE, "secret_file", "not both"),
    ("missing secret file", 'secret_file = "no-such-file"\n' + NODES, "secret_file", "cannot read"),
    ("raft not table", "raft = 5\n" + BASE, "raft", "expected a table"),
    (
        "election <= heartbeat",
        BASE + "[raft]\nelection_ticks = 3\nheartbeat_ticks = 3\n",
        "raft.election_ticks",
        "greater than raft.heartbeat_ticks",
    ),
    ("negative tick", BASE + "[raft]\ntick_interval = -1\n", "raft.tick_interval", "> 0, got -1"),
    ("zero tick", BASE + "[raft]\ntick_interval = 0\n", "raft.tick_interval", "> 0"),
    ("infinite tick", BASE + "[raft]\ntick_interval = inf\n", "raft.tick_interval", "got inf"),
    ("tick as string", BASE + '[raft]\ntick_interval = "fast"\n', "raft.tick_interval", '"fast"'),
    ("snapshot zero", BASE + "[raft]\nsnapshot_entries = 0\n", "raft.snapshot_entries", ">= 1"),
    ("max_line tiny", BASE + "[server]\nmax_line = 10\n", "server.max_line", ">= 64"),
    (
        "max_connections zero",
        BASE + "[server]\nmax_connections = 0\n",
        "server.max_connections",
        "got 0",
    ),
    ("idle negative", BASE + "[server]\nidle_timeout = -5\n", "server.idle_timeout", ">= 0"),
    (
        "request timeout zero",
        BASE + "[server]\nrequest_timeout = 0\n",
        "server.request_timeout",
        "> 0",
    ),
    ("password empty", BASE + '[server]\npassword = ""\n', "server.password", "empty"),
    ("auth timeout zero", BASE + "[server]\nauth_timeout = 0\n", "server.auth_timeout", "> 0"),
    (
        "per-address share above the total",
        BASE + "[server]\nmax_unauthenticated = 4\nmax_unauthenticated_per_address = 5\n",
        "server.max_unauthenticated_per_address",
        "at most server.max_unauthenticated (4), got 5",
    ),
    (
        "reply budget below four lines",
        BASE + "[server]\nmax_line = 1024\nmax_reply_bytes = 4095\n",
        "server.max_reply_bytes",
        ">= 4096",
    ),
    (
        "server reply budget below one connection's",
        BASE + "[server]\nmax_reply_bytes = 300000\nmax_total_reply_bytes = 299999\n",
        "server.max_total_reply_bytes",
        "at least server.max_reply_bytes (300000)",
    ),
    ("scan limit zero", BASE + "[server]\nscan_limit = 0\n", "server.scan_limit", ">= 1"),
    (
        "client tls without a key",
        BASE + '[server]\ntls_cert = "node.pem"\n',
        "server.tls_key",
        "missing: TLS for clients needs tls_cert and tls_key",
    ),
    ("tls without ca", BASE + '[tls]\ncert = "a.pem"\nkey = "a.key"\n', "tls.ca", "missing"),
    (
        "password number",
        BASE + "[server]\npassword = 1234\n",
        "server.password",
        "expected a string",
    ),
    ("data_dir number", "data_dir = 5\n" + BASE, "data_dir", "expected a string"),
    (
        "node data_dir empty",
        BASE.replace("peer_port = 5041", 'peer_port = 5041\ndata_dir = ""'),
        "node[0].data_dir",
        "empty",
    ),
    ("cluster name empty", 'cluster_name = ""\n' + BASE, "cluster_name", "empty"),
]


@pytest.mark.parametrize(
    ("text", "field", "fragment"), [c[1:] for c in BROKEN], ids=[c[0] for c in BROKEN]
)
def test_broken_config_names_the_field(text: str, field: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    error = caught.value
    assert error.source == "test.toml"
    assert error.field == field, str(error)
    assert str(error).startswith(f"test.toml: {field}: ")
    assert fragment in error.problem, str(error)


def test_message_format_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text(BASE.replace("peer_port = 5043", 'peer_port = "x"'))
    with pytest.raises(ConfigError) as caught:
        load_config(path, env=NO_ENV)
    assert str(caught.value) == f'{path}: node[2].peer_port: expected an integer 1-65535, got "x"'


def test_invalid_toml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('secret = "x"\nreplication = = 3\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path, env=NO_ENV)
    assert caught.value.field == "line 2"
    assert str(caught.value).startswith(f"{path}: line 2: invalid TOML: ")
    assert str(caught.value).endswith("replication = = 3")


def test_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(b'secret = "x"\n# caf\xe9\n')
    with pytest.raises(ConfigError, match="line 2: the file is not valid UTF-8"):
        load_config(path, env=NO_ENV)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match=r"^no/such\.toml: cannot read the file"):
        load_config("no/such.toml")


# Where the secret comes from


def test_secret_file_is_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "cluster.secret").write_text("from-the-secret-file\n")
    path = tmp_path / "cluster.toml"
    path.write_text('secret_file = "cluster.secret"\n' + NODES)
    assert load_config(path, env=NO_ENV).secret == b"from-the-secret-file"


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    env = {"BOUTIQUE_SECRET": "from-the-environment"}
    assert parse(BASE, env=env).secret == b"from-the-environment"
    # ...even a secret_file that does not exist is then not read.
    path = tmp_path / "cluster.toml"
    path.write_text('secret_file = "absent"\n' + NODES)
    assert load_config(path, env=env).secret == b"from-the-environment"
    # An empty variable counts as unset.
    assert parse(BASE, env={"BOUTIQUE_SECRET": ""}).secret == SECRET.encode()


def test_short_environment_secret_is_named() -> None:
    with pytest.raises(ConfigError, match="BOUTIQUE_SECRET"):
        parse(BASE, env={"BOUTIQUE_SECRET": "tiny"})


def test_single_node_without_secret_gets_a_random_one() -> None:
    text = '[[node]]\nname = "solo"\nid = 7\nhost = "localhost"\nclient_port = 1\npeer_port = 2\n'
    first, second = parse(text), parse(text)
    assert len(first.secret) == 32
    assert first.secret != second.secret
    assert [r.replicas for r in first.ranges] == [(7,)] * 4
    assert RangeMap(first.ranges) == first.range_map


# The metrics endpoint


def test_metrics_are_off_by_default() -> None:
    config = parse(BASE)
    assert config.metrics_port == 0
    assert config.metrics_host == "127.0.0.1"
    assert all(config.metrics_port_of(node) == 0 for node in config.nodes)


def test_metrics_port_and_node_override() -> None:
    text = '[metrics]\nport = 9100\nhost = "0.0.0.0"\n' + BASE.replace(
        "peer_port = 5042", "peer_port = 5042\nmetrics_port = 9102"
    ).replace("peer_port = 5043", "peer_port = 5043\nmetrics_port = 0")
    config = parse(f'secret = "{SECRET}"\n' + text.replace(f'secret = "{SECRET}"\n', ""))
    assert config.metrics_host == "0.0.0.0"
    ports = [config.metrics_port_of(node) for node in config.nodes]
    assert ports == [9100, 9102, 0]


METRICS_BROKEN = [
    ('[metrics]\nport = "x"\n', "metrics.port", "expected an integer 0-65535"),
    ("[metrics]\nport = 70000\n", "metrics.port", "expected an integer 0-65535"),
    ("[metrics]\nport = -1\n", "metrics.port", "expected an integer 0-65535"),
    ('[metrics]\nhost = ""\n', "metrics.host", "empty"),
    ('[metrics]\nhost = "a b"\n', "metrics.host", "host name or address"),
    ("[metrics]\nprot = 9100\n", "metrics.prot", "did you mean"),
    ("metrics = 9100\n", "metrics", "expected a table"),
]


@pytest.mark.parametrize(("table", "field", "fragment"), METRICS_BROKEN)
def test_broken_metrics_table_names_the_field(table: str, field: str, fragment: str) -> None:
    # Top-level keys come before the tables, so the secret goes first.
    with pytest.raises(ConfigError) as caught:
        parse(f'secret = "{SECRET}"\n' + table + NODES)
    assert caught.value.field == field, str(caught.value)
    assert fragment in caught.value.problem, str(caught.value)


def test_node_metrics_port_clashing_with_another_port_is_named() -> None:
    text = BASE.replace("peer_port = 5042", "peer_port = 5042\nmetrics_port = 4041")
    with pytest.raises(ConfigError) as caught:
        parse(text)
    assert caught.value.field == "node[1].metrics_port"
    assert "already node[0].client_port" in caught.value.problem
