"""Mutual TLS between nodes: the SSL contexts a node's transport uses on its peer port.

Each node has a certificate and key signed by the cluster's CA. The accepting side
requires a client certificate from that CA; the dialing side checks the acceptor's
certificate against the CA and the peer's configured host. Inside TLS the transport's
HMAC handshake still runs, so a certificate alone does not make a node a member: it
must also hold the cluster secret.

``client_port_context`` is the one-sided context of a client port with TLS.

This module only builds contexts from files; it never opens a socket and never
generates keys (``boutique.devcerts`` makes development certificates).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path


class PeerTLSError(ValueError):
    """A CA, certificate or key file that cannot be used; the message names it."""


@dataclass(frozen=True, slots=True)
class PeerTLS:
    """The two contexts of one node: ``server`` for accepted connections, ``client``
    for the ones it dials."""

    server: ssl.SSLContext
    client: ssl.SSLContext

    @classmethod
    def load(cls, ca: Path, cert: Path, key: Path) -> PeerTLS:
        return cls(
            _context(ssl.Purpose.CLIENT_AUTH, ca, cert, key),
            _context(ssl.Purpose.SERVER_AUTH, ca, cert, key),
        )


def client_port_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The context of a client port with TLS: the node shows ``cert``; clients show
    nothing (they prove themselves with AUTH, if the server wants a password)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise PeerTLSError(f"cannot use certificate {cert} with key {key}: {exc}") from None
    return context


def _context(purpose: ssl.Purpose, ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(purpose)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_verify_locations(cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise PeerTLSError(f"cannot use {ca} as the CA: {exc}") from None
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise PeerTLSError(f"cannot use certificate {cert} with key {key}: {exc}") from None
    # Both sides prove who they are: a peer without a certificate from the CA gets no
    # further than the TLS handshake.
    context.verify_mode = ssl.CERT_REQUIRED
    return context
