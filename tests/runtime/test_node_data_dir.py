"""A node's data directory: created when missing, never shared by two nodes."""

from __future__ import annotations

from pathlib import Path

import pytest

from boutique.config import single_node_config
from boutique.runtime.node import Node
from boutique.storage.errors import StorageOpenError


def test_missing_data_dir_is_created_and_locked(tmp_path: Path) -> None:
    config = single_node_config(port=4040, data_dir=tmp_path / "deep" / "data")
    first = Node(config, config.nodes[0])
    storage = first._open_storage()
    try:
        assert (tmp_path / "deep" / "data" / "raft.db").exists()
        second = Node(config, config.nodes[0])
        with pytest.raises(StorageOpenError, match="already using this data directory"):
            second._open_storage()
    finally:
        storage.close()
        first._release_lock()
    # Once the first node let go, the directory can be used again.
    third = Node(config, config.nodes[0])
    third._open_storage().close()
    third._release_lock()


def test_data_dir_that_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("not a directory")
    config = single_node_config(port=4040, data_dir=tmp_path / "data")
    with pytest.raises(StorageOpenError, match="data"):
        Node(config, config.nodes[0])._open_storage()


def test_server_refuses_a_corrupt_data_file_naming_it(tmp_path: Path) -> None:
    import subprocess
    import sys

    from boutique.testing.local_cluster import free_ports

    data = tmp_path / "data"
    data.mkdir()
    (data / "raft.db").write_bytes(b"this is not a database" * 100)
    (port,) = free_ports(1)
    process = subprocess.Popen(
        [sys.executable, "-m", "boutique_server", "--data-dir", str(data), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 3
    assert str(data / "raft.db") in err.decode()
    # The unreadable file is left as it was: nothing started empty over it.
    assert (data / "raft.db").read_bytes() == b"this is not a database" * 100
