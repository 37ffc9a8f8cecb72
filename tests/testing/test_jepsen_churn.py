"""Lost acknowledged writes across DROP/re-CREATE churn, on hand-made histories (no
processes): a DROP resets every key of its bucket, so what it removed is not lost, but
a write acknowledged after it (with no CREATE since) or data that survives it is."""

from __future__ import annotations

from boutique.testing.history import CREATE, DROP, GET, PUT, History, Outcome
from boutique.testing.jepsen import CHURN_CLIENT, FINAL_CLIENT, bucket_of, lost_acknowledged_writes
from boutique.testing.linearizability import check_kv_history

KEY = "pears/k"


def record(
    history: History,
    client: int,
    kind: str,
    key: str,
    at: float,
    outcome: Outcome,
    value: str | None = None,
    result: str | None = None,
) -> None:
    op = history.invoke(client, kind, key, value, at)
    history.complete(op, at + 1, outcome, result)


def test_a_drop_excuses_what_it_removed() -> None:
    history = History()
    record(history, 1, PUT, KEY, 0, Outcome.OK, "a")
    record(history, CHURN_CLIENT, DROP, "pears", 2, Outcome.OK)
    record(history, FINAL_CLIENT, GET, KEY, 4, Outcome.NOT_FOUND)
    assert lost_acknowledged_writes(history.operations()) == []
    assert check_kv_history(history.operations(), scope_of=bucket_of).linearizable


def test_a_write_acknowledged_after_a_drop_is_lost_when_the_bucket_is_gone() -> None:
    # The outcome: DROP OK, then PUT OK (on a group the DROP did not fence),
    # and in the end the bucket is gone.
    history = History()
    record(history, CHURN_CLIENT, DROP, "pears", 0, Outcome.OK)
    record(history, 1, PUT, KEY, 2, Outcome.OK, "late")
    record(history, FINAL_CLIENT, GET, KEY, 4, Outcome.NOT_FOUND)
    lost = lost_acknowledged_writes(history.operations())
    assert [w.write.value for w in lost] == ["late"]
    assert not check_kv_history(history.operations(), scope_of=bucket_of).linearizable


def test_data_that_survives_a_drop_and_a_create_is_a_lost_drop() -> None:
    history = History()
    record(history, 1, PUT, KEY, 0, Outcome.OK, "old")
    record(history, CHURN_CLIENT, DROP, "pears", 2, Outcome.OK)
    record(history, CHURN_CLIENT, CREATE, "pears", 4, Outcome.OK)
    record(history, FINAL_CLIENT, GET, KEY, 6, Outcome.OK, result="old")
    lost = lost_acknowledged_writes(history.operations())
    assert [w.write.kind for w in lost] == [DROP]
    # And after a re-CREATE, absent is what the final read must show.
    history = History()
    record(history, 1, PUT, KEY, 0, Outcome.OK, "old")
    record(history, CHURN_CLIENT, DROP, "pears", 2, Outcome.OK)
    record(history, CHURN_CLIENT, CREATE, "pears", 4, Outcome.OK)
    record(history, FINAL_CLIENT, GET, KEY, 6, Outcome.OK, result=None)
    assert lost_acknowledged_writes(history.operations()) == []
