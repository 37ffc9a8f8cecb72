"""Table tests for the majority arithmetic in ``boutique.raft.quorum``.

In the spirit of etcd-io/raft ``quorum/testdata/majority_commit.txt``: each row is a
voter set, what each voter has acknowledged, and the answer a majority implies.
"""

from __future__ import annotations

import pytest

from boutique.raft.quorum import VoteResult, committed_index, has_quorum, majority, vote_result


@pytest.mark.parametrize(
    ("n", "expected"),
    [(0, 1), (1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (6, 4), (7, 4)],
)
def test_majority(n: int, expected: int) -> None:
    assert majority(n) == expected


# (voters, match, committed index). A voter missing from ``match`` has stored nothing;
# entries for non-voters (learners, removed nodes) never count.
COMMIT_TABLE: list[tuple[set[int], dict[int, int], int]] = [
    # No voters: no quorum to trust, nothing is committed.
    (set(), {}, 0),
    (set(), {1: 12}, 0),
    # One voter: what it stores is committed.
    ({1}, {}, 0),
    ({1}, {1: 12}, 12),
    ({1}, {2: 12}, 0),
    # Two voters: both must have it.
    ({1, 2}, {1: 12}, 0),
    ({1, 2}, {1: 12, 2: 5}, 5),
    ({1, 2}, {1: 5, 2: 12}, 5),
    ({1, 2}, {1: 7, 2: 7}, 7),
    # Three voters: the middle value.
    ({1, 2, 3}, {}, 0),
    ({1, 2, 3}, {1: 12}, 0),
    ({1, 2, 3}, {1: 12, 2: 5}, 5),
    ({1, 2, 3}, {1: 12, 2: 5, 3: 6}, 6),
    ({1, 2, 3}, {1: 12, 2: 5, 3: 4}, 5),
    ({1, 2, 3}, {1: 5, 2: 5, 3: 5}, 5),
    ({1, 2, 3}, {1: 100, 2: 100, 3: 1}, 100),
    # A learner far ahead does not help.
    ({1, 2, 3}, {1: 10, 4: 99, 5: 99}, 0),
    ({1, 2, 3}, {1: 10, 2: 3, 4: 99}, 3),
    # Four voters: three must have it (the second lowest of four).
    ({1, 2, 3, 4}, {1: 10, 2: 10}, 0),
    ({1, 2, 3, 4}, {1: 10, 2: 10, 3: 9}, 9),
    ({1, 2, 3, 4}, {1: 10, 2: 9, 3: 8, 4: 7}, 8),
    ({1, 2, 3, 4}, {1: 7, 2: 8, 3: 9, 4: 10}, 8),
    ({1, 2, 3, 4}, {1: 10, 2: 10, 3: 10, 4: 1}, 10),
    # Five voters: the third highest.
    ({1, 2, 3, 4, 5}, {1: 5, 2: 4, 3: 3, 4: 2, 5: 1}, 3),
    ({1, 2, 3, 4, 5}, {1: 5, 2: 5}, 0),
    ({1, 2, 3, 4, 5}, {1: 5, 2: 5, 3: 1}, 1),
    ({1, 2, 3, 4, 5}, {1: 9, 2: 9, 3: 9, 4: 0, 5: 0}, 9),
    # Six voters: four must have it.
    ({1, 2, 3, 4, 5, 6}, {1: 6, 2: 5, 3: 4, 4: 3, 5: 2, 6: 1}, 3),
    ({1, 2, 3, 4, 5, 6}, {1: 6, 2: 6, 3: 6}, 0),
    ({1, 2, 3, 4, 5, 6}, {1: 6, 2: 6, 3: 6, 4: 2}, 2),
    # Seven voters: four must have it.
    ({1, 2, 3, 4, 5, 6, 7}, {i: i for i in range(1, 8)}, 4),
    ({1, 2, 3, 4, 5, 6, 7}, {1: 8, 2: 8, 3: 8}, 0),
    ({1, 2, 3, 4, 5, 6, 7}, {1: 8, 2: 8, 3: 8, 4: 8}, 8),
]


@pytest.mark.parametrize(("voters", "match", "expected"), COMMIT_TABLE)
def test_committed_index(voters: set[int], match: dict[int, int], expected: int) -> None:
    assert committed_index(voters, match) == expected


@pytest.mark.parametrize(("voters", "match", "expected"), COMMIT_TABLE)
def test_committed_index_is_stored_on_a_majority(
    voters: set[int], match: dict[int, int], expected: int
) -> None:
    """The committed index is on a majority and nothing higher is."""
    if not voters:
        return
    holders = [v for v in voters if match.get(v, 0) >= expected]
    assert len(holders) >= majority(len(voters))
    above = [v for v in voters if match.get(v, 0) > expected]
    assert len(above) < majority(len(voters))


def test_committed_index_accepts_any_collection() -> None:
    assert committed_index([3, 1, 2], {1: 4, 2: 4, 3: 9}) == 4
    assert committed_index(frozenset({1, 2, 3}), {1: 4, 2: 5, 3: 9}) == 5


# (voters, votes, result). ``True`` granted, ``False`` rejected, absent not yet answered.
VOTE_TABLE: list[tuple[set[int], dict[int, bool], VoteResult]] = [
    # No voters: an election can never be won.
    (set(), {}, VoteResult.LOST),
    (set(), {1: True}, VoteResult.LOST),
    # One voter.
    ({1}, {}, VoteResult.PENDING),
    ({1}, {1: True}, VoteResult.WON),
    ({1}, {1: False}, VoteResult.LOST),
    # Two voters: both are needed.
    ({1, 2}, {1: True}, VoteResult.PENDING),
    ({1, 2}, {1: True, 2: True}, VoteResult.WON),
    ({1, 2}, {1: True, 2: False}, VoteResult.LOST),
    ({1, 2}, {2: False}, VoteResult.LOST),
    # Three voters.
    ({1, 2, 3}, {}, VoteResult.PENDING),
    ({1, 2, 3}, {1: True}, VoteResult.PENDING),
    ({1, 2, 3}, {1: True, 2: True}, VoteResult.WON),
    ({1, 2, 3}, {1: True, 2: False}, VoteResult.PENDING),
    ({1, 2, 3}, {1: True, 2: False, 3: False}, VoteResult.LOST),
    ({1, 2, 3}, {2: False, 3: False}, VoteResult.LOST),
    ({1, 2, 3}, {1: True, 2: False, 3: True}, VoteResult.WON),
    # Votes from non-voters are ignored.
    ({1, 2, 3}, {1: True, 4: True, 5: True}, VoteResult.PENDING),
    ({1, 2, 3}, {1: True, 2: False, 4: False, 5: False}, VoteResult.PENDING),
    # Four voters: three grants to win, two rejections to lose.
    ({1, 2, 3, 4}, {1: True, 2: True}, VoteResult.PENDING),
    ({1, 2, 3, 4}, {1: True, 2: True, 3: True}, VoteResult.WON),
    ({1, 2, 3, 4}, {1: True, 2: True, 3: False}, VoteResult.PENDING),
    ({1, 2, 3, 4}, {1: True, 3: False, 4: False}, VoteResult.LOST),
    ({1, 2, 3, 4}, {1: True, 2: True, 3: False, 4: False}, VoteResult.LOST),
    # Five voters.
    ({1, 2, 3, 4, 5}, {1: True, 2: True}, VoteResult.PENDING),
    ({1, 2, 3, 4, 5}, {1: True, 2: True, 3: True}, VoteResult.WON),
    ({1, 2, 3, 4, 5}, {1: True, 2: False, 3: False}, VoteResult.PENDING),
    ({1, 2, 3, 4, 5}, {1: True, 2: False, 3: False, 4: False}, VoteResult.LOST),
    ({1, 2, 3, 4, 5}, {1: True, 2: True, 3: False, 4: False}, VoteResult.PENDING),
    # Six voters: four grants to win, three rejections to lose.
    ({1, 2, 3, 4, 5, 6}, {1: True, 2: True, 3: True}, VoteResult.PENDING),
    ({1, 2, 3, 4, 5, 6}, {1: True, 2: True, 3: True, 4: True}, VoteResult.WON),
    ({1, 2, 3, 4, 5, 6}, {4: False, 5: False}, VoteResult.PENDING),
    ({1, 2, 3, 4, 5, 6}, {4: False, 5: False, 6: False}, VoteResult.LOST),
]


@pytest.mark.parametrize(("voters", "votes", "expected"), VOTE_TABLE)
def test_vote_result(voters: set[int], votes: dict[int, bool], expected: VoteResult) -> None:
    assert vote_result(voters, votes) is expected


# (voters, acks, has quorum)
QUORUM_TABLE: list[tuple[set[int], set[int], bool]] = [
    (set(), set(), False),
    (set(), {1, 2, 3}, False),
    ({1}, set(), False),
    ({1}, {1}, True),
    ({1}, {2}, False),
    ({1, 2}, {1}, False),
    ({1, 2}, {1, 2}, True),
    ({1, 2, 3}, {1}, False),
    ({1, 2, 3}, {1, 3}, True),
    ({1, 2, 3}, {1, 4, 5}, False),
    ({1, 2, 3, 4}, {1, 2}, False),
    ({1, 2, 3, 4}, {1, 2, 4}, True),
    ({1, 2, 3, 4, 5}, {2, 4}, False),
    ({1, 2, 3, 4, 5}, {2, 4, 5}, True),
    ({1, 2, 3, 4, 5, 6}, {1, 2, 3}, False),
    ({1, 2, 3, 4, 5, 6}, {1, 2, 3, 6}, True),
]


@pytest.mark.parametrize(("voters", "acks", "expected"), QUORUM_TABLE)
def test_has_quorum(voters: set[int], acks: set[int], expected: bool) -> None:
    assert has_quorum(voters, acks) is expected


def test_has_quorum_accepts_lists_and_dict_keys() -> None:
    assert has_quorum([1, 2, 3], {2: None, 3: None}.keys())
    assert not has_quorum((1, 2, 3), [3, 3, 3])
