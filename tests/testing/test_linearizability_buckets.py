"""The checker's model of DROP/re-CREATE churn: a key's register may hold "no bucket";
drop sets it, create clears it to absent, NOT FOUND reads it, and OK writes need a
bucket. Known anomalies are caught (a write acknowledged after a DROP, data that
survives a DROP, NOT FOUND of a bucket that exists), and the verdict matches a
brute-force search on small histories."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from boutique.testing.history import Operation, Outcome
from boutique.testing.linearizability import CheckResult, check_kv_history

OK, FAIL, UNKNOWN, NOT_FOUND = Outcome.OK, Outcome.FAIL, Outcome.UNKNOWN, Outcome.NOT_FOUND
KEY = "p/x"


def op(
    kind: str,
    start: float,
    end: float | None,
    outcome: Outcome = OK,
    *,
    value: str | None = None,
    result: str | None = None,
    key: str = KEY,
) -> Operation:
    if kind in ("create", "drop"):
        key = key.split("/")[0]
    done = None if outcome is UNKNOWN else end
    return Operation(0, kind, key, value, start, done, outcome, result)


def scope(key: str) -> str:
    return key.split("/")[0]


def check(*ops: Operation) -> CheckResult:
    return check_kv_history(ops, scope_of=scope)


def test_a_write_acknowledged_after_a_drop_is_an_anomaly() -> None:
    # The history: DROP answered OK, then a PUT answered OK, nothing re-created.
    result = check(op("drop", 0, 1), op("put", 2, 3, value="v"))
    assert not result.linearizable
    assert "not linearizable" in result.explain()


def test_data_that_survives_a_drop_and_re_create_is_an_anomaly() -> None:
    before = op("put", 0, 1, value="v")
    dropped = [op("drop", 2, 3), op("create", 4, 5)]
    assert not check(before, *dropped, op("get", 6, 7, result="v")).linearizable
    assert check(before, *dropped, op("get", 6, 7, result=None)).linearizable


def test_not_found_is_a_read_of_no_bucket() -> None:
    assert check(op("drop", 0, 1), op("get", 2, 3, NOT_FOUND)).linearizable
    assert check(op("drop", 0, 1), op("put", 2, 3, NOT_FOUND, value="v")).linearizable
    # The bucket exists (it was never dropped): NOT FOUND is wrong.
    assert not check(op("put", 0, 1, value="v"), op("get", 2, 3, NOT_FOUND)).linearizable
    # And a read after a drop must not see the old value.
    assert not check(
        op("put", 0, 1, value="v"), op("drop", 2, 3), op("get", 4, 5, result="v")
    ).linearizable


def test_create_of_an_existing_bucket_keeps_its_keys() -> None:
    assert check(
        op("put", 0, 1, value="v"), op("create", 2, 3), op("get", 4, 5, result="v")
    ).linearizable


def test_two_acknowledged_drops_need_a_create_between_them() -> None:
    assert not check(op("drop", 0, 2), op("drop", 1, 3)).linearizable
    assert check(op("drop", 0, 2), op("drop", 1, 3, NOT_FOUND)).linearizable
    assert check(op("drop", 0, 1), op("create", 2, 3), op("drop", 4, 5)).linearizable


def test_an_unknown_drop_may_land_late_but_not_before_it_was_sent() -> None:
    put = op("put", 0, 1, value="v")
    late = op("drop", 2, None, UNKNOWN)
    assert check(put, late, op("get", 10, 11, NOT_FOUND)).linearizable
    # It landed after a create that found the bucket still there, then a create reset it.
    assert check(
        put,
        late,
        op("create", 3, 4),
        op("get", 5, 6, NOT_FOUND),
        op("create", 7, 8),
        op("get", 9, 10, result=None),
    ).linearizable
    sent_late = op("drop", 20, None, UNKNOWN)
    assert not check(put, sent_late, op("get", 10, 11, NOT_FOUND)).linearizable


def test_an_unknown_put_while_there_is_no_bucket_does_nothing() -> None:
    assert check(
        op("drop", 0, 1),
        op("put", 2, None, UNKNOWN, value="v"),
        op("create", 3, 4),
        op("get", 5, 6, result=None),
    ).linearizable


def test_other_buckets_are_not_touched_by_a_drop() -> None:
    assert check(
        op("put", 0, 1, value="v", key="q/x"),
        op("drop", 2, 3),
        op("get", 4, 5, result="v", key="q/x"),
    ).linearizable


def test_bucket_operations_need_scope_of() -> None:
    with pytest.raises(ValueError, match="scope_of"):
        check_kv_history([op("drop", 0, 1)])


# --- the definition, executed ------------------------------------------------------

_NB = "<no bucket>"


def _step(o: Operation, current: str | None) -> tuple[bool, str | None]:
    """Whether ``o`` may take effect on ``current``, and the value it leaves."""
    if o.outcome is NOT_FOUND:
        return current == _NB, current
    if o.kind == "get":
        return current != _NB and o.result == current, current
    if o.kind == "create":
        return True, None if current == _NB else current
    if current == _NB:
        return o.outcome is not OK and o.kind != "drop", current  # a drop leaves _NB too
    return True, _NB if o.kind == "drop" else o.value


def brute_force(ops: list[Operation]) -> bool:
    known = [o for o in ops if o.outcome in (OK, NOT_FOUND)]
    maybe = [o for o in ops if o.outcome in (UNKNOWN, None) and o.kind != "get"]

    def fits(order: tuple[Operation, ...]) -> bool:
        for a, b in itertools.combinations(order, 2):
            if b.completed is not None and b.outcome in (OK, NOT_FOUND) and b.completed < a.invoked:
                return False
        current: str | None = None
        for o in order:
            if o.kind == "drop" and o.outcome is not OK and o.outcome is not NOT_FOUND:
                current = _NB  # an unknown drop that lands
                continue
            allowed, current = _step(o, current)
            if not allowed:
                return False
        return True

    for size in range(len(maybe) + 1):
        for chosen in itertools.combinations(maybe, size):
            if any(fits(order) for order in itertools.permutations([*known, *chosen])):
                return True
    return False


@st.composite
def churn_histories(draw: st.DrawFn) -> list[Operation]:
    ops = []
    for client in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["put", "get", "delete", "drop", "create"]))
        invoked = draw(st.integers(0, 8))
        completed = invoked + draw(st.integers(0, 4))
        outcomes = [OK, OK, FAIL, UNKNOWN, None, NOT_FOUND]
        if kind == "create":
            outcomes.remove(NOT_FOUND)
        outcome = draw(st.sampled_from(outcomes))
        value = draw(st.sampled_from(["1", "2"])) if kind == "put" else None
        result = draw(st.sampled_from([None, "1"])) if kind == "get" and outcome is OK else None
        done = completed if outcome in (OK, FAIL, NOT_FOUND) else None
        key = "p" if kind in ("drop", "create") else KEY
        ops.append(Operation(client, kind, key, value, invoked, done, outcome, result))
    return ops


@settings(max_examples=600, deadline=None)
@given(churn_histories())
def test_agrees_with_brute_force(ops: list[Operation]) -> None:
    result = check_kv_history(ops, scope_of=scope)
    assert result.linearizable == brute_force(ops), result.explain()
