"""The key-value linearizability checker: known-good histories, classic anomalies, the
UNKNOWN/FAIL outcome rules, property tests (real executions pass, corrupted reads fail,
and the verdict matches a brute-force search on small histories), and performance."""

from __future__ import annotations

import itertools
import random
import time

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from boutique.testing.history import History, Operation, Outcome
from boutique.testing.linearizability import CheckResult, check_kv_history

OK, FAIL, UNKNOWN = Outcome.OK, Outcome.FAIL, Outcome.UNKNOWN


def put(
    client: int, value: str, start: float, end: float | None, *, outcome: Outcome = OK
) -> Operation:
    completed = None if outcome is UNKNOWN else end
    return Operation(client, "put", "x", value, start, completed, outcome, None)


def get(
    client: int, result: str | None, start: float, end: float | None, *, outcome: Outcome = OK
) -> Operation:
    completed = None if outcome is UNKNOWN else end
    return Operation(client, "get", "x", None, start, completed, outcome, result)


def delete(client: int, start: float, end: float | None, *, outcome: Outcome = OK) -> Operation:
    completed = None if outcome is UNKNOWN else end
    return Operation(client, "delete", "x", None, start, completed, outcome, None)


def on(key: str, operation: Operation) -> Operation:
    operation.key = key
    return operation


def check(*ops: Operation) -> CheckResult:
    return check_kv_history(ops)


def assert_linearizable(*ops: Operation) -> None:
    result = check(*ops)
    assert result.linearizable, result.explain()


def assert_anomaly(*ops: Operation) -> CheckResult:
    result = check(*ops)
    assert not result.ok, result.explain()
    assert not result.linearizable
    assert result.anomalies[0].key == ops[0].key
    return result


# --- known-good histories ---


def test_empty_history() -> None:
    result = check_kv_history([])
    assert result.linearizable
    assert result.keys_checked == 0
    assert result.operations_checked == 0


def test_read_of_a_key_never_written_is_absent() -> None:
    assert_linearizable(get(0, None, 0, 1))


def test_sequential_history() -> None:
    assert_linearizable(
        put(0, "1", 0, 1),
        get(1, "1", 2, 3),
        put(0, "2", 4, 5),
        get(1, "2", 6, 7),
        delete(0, 8, 9),
        get(1, None, 10, 11),
    )


def test_concurrent_reads_may_see_either_side_of_a_concurrent_write() -> None:
    assert_linearizable(
        put(0, "1", 0, 1),
        put(0, "2", 2, 10),
        get(1, "2", 3, 4),
        get(2, "1", 3, 5),
        get(3, "2", 11, 12),
    )


def test_concurrent_writes_may_take_effect_in_either_order() -> None:
    assert_linearizable(put(0, "1", 0, 10), put(1, "2", 0, 10), get(2, "1", 11, 12))
    assert_linearizable(put(0, "1", 0, 10), put(1, "2", 0, 10), get(2, "2", 11, 12))


def test_intervals_that_touch_count_as_concurrent() -> None:
    assert_linearizable(put(0, "1", 0, 5), get(1, None, 5, 6))


def test_keys_are_independent() -> None:
    result = check(
        on("a", put(0, "1", 0, 1)),
        on("b", put(0, "1", 0, 1)),
        on("a", get(1, "1", 2, 3)),
        on("c", get(1, None, 2, 3)),
        on("b", get(1, "2", 2, 3, outcome=UNKNOWN)),
    )
    assert result.linearizable
    assert result.keys_checked == 3
    assert result.operations_checked == 4


def test_long_sequential_history_needs_no_recursion() -> None:
    ops = []
    for i in range(5000):
        ops.append(put(0, str(i % 7), 4 * i, 4 * i + 1))
        ops.append(get(1, str(i % 7), 4 * i + 2, 4 * i + 3))
    assert_linearizable(*ops)


# --- classic anomalies ---


def test_stale_read_after_a_completed_write() -> None:
    result = assert_anomaly(put(0, "1", 0, 1), put(0, "2", 2, 3), get(1, "1", 4, 5))
    anomaly = result.anomalies[0]
    assert "t=5" in anomaly.message
    assert [o.value for o in anomaly.linearized] == ["1", "2"]
    assert [o.kind for o in anomaly.stuck] == ["get"]


def test_read_of_a_value_never_written() -> None:
    result = assert_anomaly(put(0, "1", 0, 1), get(1, "zzz", 2, 3))
    assert "no put ever wrote it" in result.anomalies[0].message
    assert result.anomalies[0].operations[0].result == "zzz"


def test_reads_observing_concurrent_writes_in_contradictory_orders() -> None:
    # Reader 1 sees 1 then 2, reader 2 sees 2 then 1, while both writes are in flight.
    assert_anomaly(
        put(0, "1", 0, 100),
        put(1, "2", 0, 100),
        get(2, "1", 1, 2),
        get(2, "2", 3, 4),
        get(3, "2", 1, 2),
        get(3, "1", 3, 4),
    )


def test_the_same_reads_in_a_consistent_order_are_fine() -> None:
    assert_linearizable(
        put(0, "1", 0, 100),
        put(1, "2", 0, 100),
        get(2, "1", 1, 2),
        get(2, "2", 3, 4),
        get(3, "1", 1, 2),
        get(3, "2", 3, 4),
    )


def test_lost_acknowledged_write() -> None:
    assert_anomaly(put(0, "1", 0, 1), get(1, None, 2, 3))


def test_only_the_broken_key_is_reported() -> None:
    result = check(
        on("a", put(0, "1", 0, 1)),
        on("a", get(1, "1", 2, 3)),
        on("b", put(0, "1", 0, 1)),
        on("b", get(1, None, 2, 3)),
    )
    assert [anomaly.key for anomaly in result.anomalies] == ["b"]
    assert result.keys_checked == 2


def test_read_before_the_write_was_invoked() -> None:
    assert_anomaly(get(1, "1", 0, 1), put(0, "1", 2, 3))


def test_anomaly_is_reported_at_the_first_contradiction() -> None:
    ops = []
    for i in range(50):
        ops.append(put(0, str(i), 10 * i, 10 * i + 1))
        ops.append(get(1, str(i), 10 * i + 2, 10 * i + 3))
    ops.append(get(2, "3", 45, 46))  # stale: 4 was written by t=41
    ops.sort(key=lambda o: o.invoked)
    result = check(*ops)
    assert not result.ok
    anomaly = result.anomalies[0]
    assert "t=46" in anomaly.message
    assert len(anomaly.operations) < 15
    text = result.explain()
    assert text.startswith("NOT LINEARIZABLE")
    assert "get('x') -> '3'" in text


# --- UNKNOWN and FAIL outcomes ---


def test_unknown_write_observed_later() -> None:
    assert_linearizable(put(0, "1", 0, None, outcome=UNKNOWN), get(1, "1", 50, 51))


def test_unknown_write_never_observed() -> None:
    assert_linearizable(put(0, "1", 0, None, outcome=UNKNOWN), get(1, None, 50, 51))


def test_unknown_write_may_take_effect_long_after_it_was_sent() -> None:
    assert_linearizable(
        put(0, "1", 0, None, outcome=UNKNOWN),
        get(1, None, 50, 51),
        put(1, "2", 52, 53),
        get(1, "1", 54, 55),
    )


def test_unknown_write_takes_effect_at_most_once() -> None:
    assert_anomaly(
        put(0, "1", 0, None, outcome=UNKNOWN),
        get(1, "1", 10, 11),
        put(1, "2", 12, 13),
        get(1, "1", 14, 15),
    )


def test_unknown_write_cannot_take_effect_before_it_was_sent() -> None:
    assert_anomaly(get(1, "1", 0, 1), put(0, "1", 2, None, outcome=UNKNOWN))


def test_pending_operations_count_as_unknown() -> None:
    pending = Operation(0, "put", "x", "1", 0, None, None, None)
    assert_linearizable(pending, get(1, "1", 5, 6))


def test_unknown_read_constrains_nothing() -> None:
    assert_linearizable(put(0, "1", 0, 1), get(1, "nonsense", 2, None, outcome=UNKNOWN))


def test_failed_write_observed() -> None:
    result = assert_anomaly(put(0, "1", 0, 1, outcome=FAIL), get(1, "1", 2, 3))
    anomaly = result.anomalies[0]
    assert "certainly failed" in anomaly.message
    assert [o.outcome for o in anomaly.operations] == [OK, FAIL]


def test_failed_write_is_dropped() -> None:
    assert_linearizable(put(0, "1", 0, 1), put(0, "2", 2, 3, outcome=FAIL), get(1, "1", 4, 5))
    assert check(put(0, "2", 2, 3, outcome=FAIL)).operations_checked == 0


# --- delete and duplicated values ---


def test_delete_makes_the_key_absent() -> None:
    assert_linearizable(put(0, "1", 0, 1), delete(0, 2, 3), get(1, None, 4, 5))
    assert_anomaly(put(0, "1", 0, 1), delete(0, 2, 3), get(1, "1", 4, 5))


def test_delete_of_an_absent_key() -> None:
    assert_linearizable(delete(0, 0, 1), get(1, None, 2, 3), put(0, "1", 4, 5), get(1, "1", 6, 7))


def test_concurrent_delete_and_reads() -> None:
    assert_linearizable(put(0, "1", 0, 1), delete(0, 2, 10), get(1, "1", 3, 4), get(2, None, 3, 4))
    assert_anomaly(
        put(0, "1", 0, 1),
        delete(0, 2, 10),
        get(1, None, 3, 4),
        get(1, "1", 5, 6),
    )


def test_unknown_delete_observed() -> None:
    assert_linearizable(put(0, "1", 0, 1), delete(0, 2, None, outcome=UNKNOWN), get(1, None, 9, 10))


def test_rewriting_an_old_value() -> None:
    assert_linearizable(put(0, "1", 0, 1), put(0, "2", 2, 3), put(0, "1", 4, 5), get(1, "1", 6, 7))
    assert_anomaly(put(0, "1", 0, 1), put(0, "2", 2, 3), put(0, "1", 4, 5), get(1, "2", 6, 7))


def test_duplicate_concurrent_writes_explain_alternating_reads() -> None:
    reads = (get(9, "1", 1, 2), get(9, "2", 3, 4), get(9, "1", 5, 6))
    assert_linearizable(put(0, "1", 0, 10), put(1, "1", 0, 10), put(2, "2", 0, 10), *reads)
    assert_anomaly(put(0, "1", 0, 10), put(2, "2", 0, 10), *reads)


# --- search limits and input validation ---


def test_exceeding_max_states_is_reported_not_passed() -> None:
    ops = [put(i, str(i), 0, 100) for i in range(6)]
    ops.append(get(9, "5", 101, 102))
    result = check_kv_history(ops, max_states=3)
    assert result.ok
    assert not result.linearizable
    assert result.timeouts == ["x"]
    assert result.explain().startswith("UNDECIDED")
    assert check_kv_history(ops).linearizable


def test_malformed_operations_are_rejected() -> None:
    with pytest.raises(ValueError, match="without a completion"):
        check(Operation(0, "get", "x", None, 0, None, OK, None))
    with pytest.raises(ValueError, match="kind"):
        check(Operation(0, "cas", "x", None, 0, 1, OK, None))


# --- the recorder ---


def test_history_records_and_reports_pending_as_unknown() -> None:
    history = History()
    w = history.invoke(0, "put", "x", "1", at=0)
    r = history.invoke(1, "get", "x", None, at=1)
    pending = history.invoke(2, "put", "x", "2", at=2)
    history.complete(w, at=3, outcome=OK)
    history.complete(r, at=4, outcome=OK, result="1")
    assert len(history) == 3
    ops = history.operations()
    assert [o.outcome for o in ops] == [OK, OK, UNKNOWN]
    assert pending.outcome is None  # the recorder's own copy stays pending
    assert ops[1].result == "1"
    assert check_kv_history(ops).linearizable


def test_history_unknown_completion_has_no_time() -> None:
    history = History()
    w = history.invoke(0, "put", "x", "1", at=0)
    history.complete(w, at=5, outcome=UNKNOWN)
    assert w.completed is None
    with pytest.raises(ValueError, match="twice"):
        history.complete(w, at=6, outcome=OK)


def test_history_rejects_bad_input() -> None:
    history = History()
    with pytest.raises(ValueError):
        history.invoke(0, "cas", "x", "1", at=0)
    with pytest.raises(ValueError):
        history.invoke(0, "put", "x", None, at=0)
    r = history.invoke(0, "get", "x", None, at=5)
    with pytest.raises(ValueError, match="precedes"):
        history.complete(r, at=4, outcome=OK)


# --- property: real executions are accepted, corrupted reads are not ---


@st.composite
def executed_histories(draw: st.DrawFn) -> list[Operation]:
    """Run random operations one at a time against a dict, then give each an interval
    that contains the instant it really took effect (and some neighbours' instants)."""
    store: dict[str, str] = {}
    ops: list[Operation] = []
    for i in range(draw(st.integers(1, 40))):
        instant = 10 * i
        kind = draw(st.sampled_from(["put", "get", "delete"]))
        key = draw(st.sampled_from(["a", "b"]))
        value = draw(st.sampled_from(["1", "2", "3"])) if kind == "put" else None
        outcome = draw(st.sampled_from([OK, OK, OK, OK, FAIL, UNKNOWN]))
        invoked = instant - draw(st.integers(0, 30))
        completed = instant + draw(st.integers(0, 30))
        applied = outcome is OK or (outcome is UNKNOWN and draw(st.booleans()))
        result = store.get(key) if kind == "get" and outcome is OK else None
        if applied and kind == "put":
            assert value is not None
            store[key] = value
        elif applied and kind == "delete":
            store.pop(key, None)
        ops.append(
            Operation(
                client=i,
                kind=kind,
                key=key,
                value=value,
                invoked=invoked,
                completed=None if outcome is UNKNOWN else completed,
                outcome=outcome,
                result=result,
            )
        )
    ops.sort(key=lambda o: o.invoked)
    return ops


@settings(max_examples=300, deadline=None)
@given(executed_histories())
def test_real_executions_are_linearizable(ops: list[Operation]) -> None:
    result = check_kv_history(ops)
    assert result.linearizable, result.explain()


@settings(max_examples=300, deadline=None)
@given(executed_histories(), st.data())
def test_a_read_of_a_value_never_written_is_rejected(
    ops: list[Operation], data: st.DataObject
) -> None:
    reads = [o for o in ops if o.kind == "get" and o.outcome is OK]
    assume(reads)
    data.draw(st.sampled_from(reads)).result = "never written"
    result = check_kv_history(ops)
    assert not result.ok
    assert len(result.anomalies) == 1


def brute_force_linearizable(ops: list[Operation]) -> bool:
    """The definition, executed: try every subset of UNKNOWN writes and every order."""
    known = [o for o in ops if o.outcome is OK]
    maybe = [o for o in ops if o.outcome is not OK and o.outcome is not FAIL and o.kind != "get"]

    def fits(order: tuple[Operation, ...]) -> bool:
        for a, b in itertools.combinations(order, 2):
            if b.outcome is OK and b.completed is not None and b.completed < a.invoked:
                return False  # b finished before a began, yet a was placed first
        current: str | None = None
        for o in order:
            if o.kind == "get" and o.result != current:
                return False
            current = o.value if o.kind == "put" else current if o.kind == "get" else None
        return True

    for size in range(len(maybe) + 1):
        for chosen in itertools.combinations(maybe, size):
            if any(fits(order) for order in itertools.permutations([*known, *chosen])):
                return True
    return False


@st.composite
def arbitrary_histories(draw: st.DrawFn) -> list[Operation]:
    """Small single-key histories, mostly not linearizable, with every outcome."""
    ops = []
    for client in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["put", "get", "delete"]))
        invoked = draw(st.integers(0, 8))
        completed = invoked + draw(st.integers(0, 4))
        outcome = draw(st.sampled_from([OK, OK, OK, FAIL, UNKNOWN, None]))
        value = draw(st.sampled_from(["1", "2"])) if kind == "put" else None
        result = draw(st.sampled_from([None, "1", "2"])) if kind == "get" else None
        done = completed if outcome is OK or outcome is FAIL else None
        ops.append(Operation(client, kind, "x", value, invoked, done, outcome, result))
    return ops


@settings(max_examples=1000, deadline=None)
@given(arbitrary_histories())
def test_agrees_with_brute_force(ops: list[Operation]) -> None:
    result = check_kv_history(ops)
    assert result.linearizable == brute_force_linearizable(ops), result.explain()
    assert result.ok == result.linearizable


# --- performance ---


def simulated_history(
    rng: random.Random, *, clients: int, ops_per_client: int, keys: int
) -> list[Operation]:
    """Clients issue operations back to back; each takes effect at a random instant
    inside its interval, and results come from applying them in that order."""
    planned: list[tuple[float, Operation]] = []
    for client in range(clients):
        now = 0.0
        for _ in range(ops_per_client):
            invoked = now + rng.uniform(0, 1)
            completed = invoked + rng.uniform(0.1, 5)
            kind = rng.choice(["put", "put", "get", "get", "get", "delete"])
            value = str(rng.randrange(20)) if kind == "put" else None
            outcome = OK if rng.random() < 0.97 else UNKNOWN
            key = f"k{rng.randrange(keys)}"
            o = Operation(client, kind, key, value, invoked, completed, outcome, None)
            planned.append((rng.uniform(invoked, completed), o))
            now = completed
    store: dict[str, str] = {}
    for _, o in sorted(planned, key=lambda p: p[0]):
        if o.outcome is UNKNOWN:
            o.completed = None
            if rng.random() < 0.5:
                continue
        if o.kind == "put":
            assert o.value is not None
            store[o.key] = o.value
        elif o.kind == "delete":
            store.pop(o.key, None)
        elif o.outcome is OK:
            o.result = store.get(o.key)
    return sorted((o for _, o in planned), key=lambda o: o.invoked)


def test_performance_many_keys() -> None:
    ops = simulated_history(random.Random(1), clients=8, ops_per_client=250, keys=20)
    started = time.perf_counter()
    result = check_kv_history(ops)
    elapsed = time.perf_counter() - started
    print(f"checked {len(ops)} ops over 20 keys in {elapsed * 1000:.1f} ms")
    assert result.linearizable, result.explain()


def test_performance_one_hot_key() -> None:
    ops = simulated_history(random.Random(2), clients=5, ops_per_client=80, keys=1)
    started = time.perf_counter()
    result = check_kv_history(ops)
    elapsed = time.perf_counter() - started
    print(f"checked {len(ops)} ops on one key in {elapsed * 1000:.1f} ms")
    assert result.linearizable, result.explain()
