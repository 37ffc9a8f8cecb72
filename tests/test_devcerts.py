"""``boutique-devcerts`` and the ``[tls]`` table: one command to a TLS cluster config."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import trio

from boutique.config import ConfigError, load_config, parse_config
from boutique.devcerts import main
from boutique.runtime.peertls import PeerTLS
from boutique.runtime.transport import PeerTransport

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"


async def test_devcerts_makes_a_config_whose_nodes_talk_over_tls(tmp_path: Path) -> None:
    config_path = tmp_path / "cluster.toml"
    shutil.copy(CONFIG_DIR / "cluster.toml", config_path)
    assert main([str(config_path)]) == 0
    config = load_config(tmp_path / "cluster-tls.toml", env={})
    assert load_config(config_path, env={}).tls_files is None  # the original is untouched
    a, b = config.nodes[0], config.nodes[1]
    files_a, files_b = config.peer_tls_files(a.name), config.peer_tls_files(b.name)
    assert files_a is not None and files_b is not None
    assert files_a[1] == tmp_path / "cluster-certs" / f"{a.name}.pem"
    received: list[object] = []
    ta = PeerTransport(
        a.id,
        config.secret,
        config.cluster_name,
        {},
        lambda p, f: received.append(f),
        tls=PeerTLS.load(*files_a),
    )
    tb = PeerTransport(
        b.id, config.secret, config.cluster_name, {}, lambda p, f: None, tls=PeerTLS.load(*files_b)
    )
    async with trio.open_nursery() as nursery:
        port_a = await nursery.start(ta.run, "127.0.0.1", 0)
        port_b = await nursery.start(tb.run, "127.0.0.1", 0)
        ta.set_peers({b.id: ("127.0.0.1", port_b)})
        tb.set_peers({a.id: ("127.0.0.1", port_a)})
        tb.send(a.id, "hello over tls")
        with trio.fail_after(5):
            while not received:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert received == ["hello over tls"]
    assert main([str(config_path)]) == 0  # again: it rewrites its own file
    assert main([str(tmp_path / "cluster-tls.toml")]) == 2  # already has [tls]


def test_tls_table_needs_all_three_files() -> None:
    base = (CONFIG_DIR / "single.toml").read_text()
    with pytest.raises(ConfigError, match=r"tls\.key: missing"):
        parse_config(base + '\n[tls]\nca = "ca.pem"\ncert = "{name}.pem"\n', "t.toml")
    config = parse_config(
        base + '\n[tls]\nca = "ca.pem"\ncert = "{name}.pem"\nkey = "k/{name}.key"\n',
        "t.toml",
        base_dir=Path("/etc/boutique"),
    )
    assert config.peer_tls_files("local") == (
        Path("/etc/boutique/ca.pem"),
        Path("/etc/boutique/local.pem"),
        Path("/etc/boutique/k/local.key"),
    )
