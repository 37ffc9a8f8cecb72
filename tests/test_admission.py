"""Admission counts and throttled logging, without sockets."""

from __future__ import annotations

import logging

import pytest

from boutique.admission import Admission, ThrottledLog


def test_one_source_cannot_take_every_slot() -> None:
    admission = Admission(total=4, per_source=2)
    assert admission.admit("10.0.0.9") and admission.admit("10.0.0.9")
    assert not admission.admit("10.0.0.9")  # its share is used up...
    assert admission.admit("10.0.0.1") and admission.admit("10.0.0.2")
    assert not admission.admit("10.0.0.3")  # ...and so is the total
    assert admission.count == 4
    admission.release("10.0.0.9")
    assert admission.held_by("10.0.0.9") == 1
    assert admission.admit("10.0.0.3")
    with pytest.raises(ValueError, match="release without admit"):
        admission.release("10.0.0.7")


def test_throttled_log_writes_a_burst_then_a_count(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="test.throttle")
    throttled = ThrottledLog(logging.getLogger("test.throttle"), interval=10.0, burst=2)
    for i in range(1000):
        throttled.warning(i * 0.001, "refused %d", i)
    throttled.warning(20.0, "refused %d", 1000)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "refused 0",
        "refused 1",
        "998 more like this were not logged in the last 20 s; latest: refused 1000",
    ]
