"""The catalog's columnar snapshot form (``boutique.catalog_codec``, registry format 5):
the same catalog back, one shared placement per range, format 4 still read, bad input
refused with a reason; and the fast check of a bucket name is the slow one."""

from __future__ import annotations

import pytest

from boutique.catalog_codec import catalog_from_wire, catalog_to_wire
from boutique.machine import decode_value, encode_value
from boutique.registry import BucketInfo, RangeMap, RegistryMachine
from boutique.registry_state import validate_bucket_name

FOUR = RangeMap.from_splits(("h", "o", "v"), (1, 2, 3))


def _catalog() -> dict[str, BucketInfo]:
    return {
        "apples": BucketInfo("apples", "b/apples/1", "a-g", (1, 2, 3), 1),
        "avocados": BucketInfo("avocados", "b/avocados/4", "a-g", (1, 2, 3), 4),
        "moved": BucketInfo("moved", "b/moved/2", "h-n", (1, 4, 3), 2, moved=True),
        "日本": BucketInfo("日本", "b/日本/3", "v-z", (2, 3, 1), 3),
    }


def test_round_trip_in_columns_with_shared_placements() -> None:
    catalog = _catalog()
    wire = catalog_to_wire(catalog)
    assert isinstance(wire, dict) and set(wire) == {"names", "seqs", "where", "places"}
    assert wire["names"] == sorted(catalog)
    places = wire["places"]
    assert isinstance(places, list) and len(places) == 3  # apples and avocados share one
    restored = catalog_from_wire(decode_value(encode_value(wire)), next_seq=5)
    assert restored == catalog
    assert restored["apples"].replicas is restored["avocados"].replicas  # one tuple


def test_the_registry_writes_format_5_and_still_reads_format_4() -> None:
    machine = RegistryMachine(FOUR)
    state = machine.initial_state()
    for name in ("apples", "pears", "zucchini"):
        _, state = machine.apply(state, ("create", name))
    snapshot = decode_value(machine.snapshot(state))
    assert isinstance(snapshot, dict) and snapshot["format"] == 5
    old = {
        **snapshot,
        "format": 4,
        "buckets": [state.buckets[name].to_wire() for name in sorted(state.buckets)],
    }
    restored = machine.restore(encode_value(old))
    assert restored.buckets == state.buckets
    assert machine.snapshot(restored) == machine.snapshot(state)


def _bad(**changes: object) -> object:
    wire = catalog_to_wire(_catalog())
    assert isinstance(wire, dict)
    return {**wire, **changes}


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ([], "must be a map"),
        (_bad(extra=1), "unexpected keys"),
        (_bad(names="apples"), "names must be an array"),
        (_bad(seqs=[1, 4, 2]), "differ in length"),
        (_bad(seqs=[1, 4, 0, 3]), "seq must be a positive int"),
        (_bad(seqs=[1, 4, 2, 9]), "from the future"),
        (_bad(where=[0, 0, 1, 7]), "no placement 7"),
        (_bad(names=["apples", "apples", "moved", "日本"]), "appears twice"),
        (_bad(names=["apples", "a b", "moved", "日本"]), "not allowed"),
        (_bad(names=["apples", 5, "moved", "日本"]), "must be a str"),
        (_bad(places=[["a-g", [], False]]), "non-empty"),
        (_bad(places=[["a-g", [1], 0]]), "moved must be a bool"),
        (_bad(places=[["a-g", [1]]]), "placement must be"),
        (_bad(places=[[1, [1], False]]), "range_id"),
    ],
)
def test_bad_input_is_refused_with_a_reason(value: object, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        catalog_from_wire(value, next_seq=5)


def test_the_fast_name_check_is_the_slow_one() -> None:
    """``validate_bucket_name`` checks in C first; every code point is judged as the
    per-character rule judges it (no "/", no whitespace, only printable)."""
    # Every code point of the first three planes (where nearly all assigned ones are),
    # and a sample of the rest.
    for code in [*range(0x30000), *range(0x30000, 0x110000, 97)]:
        if 0xD800 <= code <= 0xDFFF:
            continue  # not encodable: refused for that reason
        char = chr(code)
        allowed = not (char == "/" or char.isspace() or not char.isprintable())
        try:
            validate_bucket_name(f"a{char}b")
        except ValueError:
            assert not allowed, hex(code)
        else:
            assert allowed, hex(code)
