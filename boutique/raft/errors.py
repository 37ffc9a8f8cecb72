"""Errors the Raft core raises to its caller. Each says what the caller can do next."""

from __future__ import annotations


class RaftError(Exception):
    """Base class of every error raised by ``boutique.raft``."""


class NotLeaderError(RaftError):
    """This node cannot take the request; ``leader`` is the node it believes leads
    (0 when unknown). Retry there."""

    def __init__(self, leader: int) -> None:
        super().__init__(f"not the leader (leader hint: {leader or 'unknown'})")
        self.leader = leader


class ProposalDroppedError(RaftError):
    """The leader refused the proposal for now (a leadership transfer or a membership
    change is in progress, or too many entries are uncommitted). Nothing was appended."""


class InvalidConfChangeError(RaftError):
    """The membership change can never succeed as asked (e.g. removing the last voter)."""
