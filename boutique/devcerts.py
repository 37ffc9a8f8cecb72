"""Development certificates: a CA and one certificate per node, for a config file.

``boutique-devcerts config/cluster.toml`` writes ``ca.pem`` and, for every node,
``<name>.pem`` (certificate chain) and ``<name>.key`` into a directory beside the
config (``cluster-certs/``), then writes ``cluster-tls.toml``: the same config with a
``[tls]`` table pointing at them. ``boutique-server --config config/cluster-tls.toml
--all`` then runs the cluster with mutual TLS between its nodes. Each certificate names
its node's ``host``, which is what the dialing node checks.

For development and tests only: the CA's key is thrown away, the keys are written
unencrypted, and nothing here is a substitute for a real CA. It never overwrites a
config file it did not write, and never touches the original config.
It needs the ``trustme`` package (``pip install 'boutique[dev]'``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from boutique.config import ConfigError, load_config

TLS_MARKER = "# [tls] added by boutique-devcerts"


def make_certs(config_path: Path, out_dir: Path | None = None) -> Path:
    """Write the CA, the node certificates and the TLS config; the new config's path."""
    try:
        import trustme  # noqa: F401 - only checked here; write_certs uses it
    except ImportError:
        raise SystemExit("boutique-devcerts needs trustme: pip install 'boutique[dev]'") from None
    config = load_config(config_path)
    if config.tls_files is not None:
        raise ConfigError(str(config_path), "tls", "this config already has a [tls] table")
    text = config_path.read_text()
    out_dir = out_dir or config_path.with_name(f"{config_path.stem}-certs")
    target = config_path.with_name(f"{config_path.stem}-tls.toml")
    if target.exists() and TLS_MARKER not in target.read_text():
        raise SystemExit(f"boutique-devcerts: {target} exists and was not written by it")
    table = write_certs(out_dir, [(node.name, node.host) for node in config.nodes])
    target.write_text(f"{text.rstrip()}\n\n{TLS_MARKER}\n{table}")
    load_config(target)  # the new file must load, or it is of no use
    return target


def write_certs(out_dir: Path, nodes: list[tuple[str, str]]) -> str:
    """A new CA and a certificate for each (name, host) in ``out_dir``; the ``[tls]``
    table (absolute paths) that uses them."""
    import trustme

    out_dir.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="boutique development CA")
    ca.cert_pem.write_to_path(str(out_dir / "ca.pem"))
    for name, host in nodes:
        cert = ca.issue_cert(host, organization_name=f"boutique node {name}")
        cert.private_key_and_cert_chain_pem.write_to_path(str(out_dir / f"{name}.pem"))
        key = out_dir / f"{name}.key"
        key.touch(mode=0o600)
        cert.private_key_pem.write_to_path(str(key))
    where = out_dir.resolve()
    return (
        "[tls]\n"
        f"ca = {_toml(where / 'ca.pem')}\n"
        f"cert = {_toml(where / '{name}.pem')}\n"
        f"key = {_toml(where / '{name}.key')}\n"
    )


def _toml(path: Path) -> str:
    # A JSON string is a TOML basic string (same escapes), whatever the path holds.
    return json.dumps(str(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="boutique-devcerts",
        description="Make a development CA and node certificates for a cluster config.",
    )
    parser.add_argument("config", type=Path, help="the cluster's TOML config")
    parser.add_argument("--out", type=Path, help="where to write the certificates")
    args = parser.parse_args(argv)
    try:
        target = make_certs(args.config, args.out)
    except ConfigError as exc:
        print(f"boutique-devcerts: {exc}", file=sys.stderr)
        return 2
    print(f"wrote certificates to {args.out or target.with_name(args.config.stem + '-certs')}")
    print(f"run the cluster with TLS: boutique-server --config {target} --all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
