"""Majority arithmetic: the commit index a quorum has reached, and vote outcomes.

Pure functions with table tests (``tests/raft/test_quorum.py``); nothing else.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping


class VoteResult(enum.Enum):
    PENDING = 0
    WON = 1
    LOST = 2


def majority(n: int) -> int:
    """Smallest number of voters that forms a quorum of ``n``."""
    return n // 2 + 1


def committed_index(voters: Collection[int], match: Mapping[int, int]) -> int:
    """The highest index stored on a majority of ``voters`` (missing voters count 0).

    An empty voter set commits nothing: with no voters there is no quorum to trust.
    """
    if not voters:
        return 0
    indices = sorted((match.get(v, 0) for v in voters), reverse=True)
    return indices[majority(len(indices)) - 1]


def vote_result(voters: Collection[int], votes: Mapping[int, bool]) -> VoteResult:
    """WON once a majority granted, LOST once a majority can no longer grant."""
    if not voters:
        return VoteResult.LOST
    granted = sum(1 for v in voters if votes.get(v) is True)
    rejected = sum(1 for v in voters if votes.get(v) is False)
    need = majority(len(voters))
    if granted >= need:
        return VoteResult.WON
    if len(voters) - rejected < need:
        return VoteResult.LOST
    return VoteResult.PENDING


def has_quorum(voters: Collection[int], acks: Collection[int]) -> bool:
    """True when ``acks`` contains a majority of ``voters``."""
    if not voters:
        return False
    return sum(1 for v in voters if v in acks) >= majority(len(voters))
