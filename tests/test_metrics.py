"""The metrics registry and its text format, read back with the reference parser
(``prometheus_client``), and the HTTP endpoint that serves it."""

from __future__ import annotations

import math

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from boutique.metrics import Registry
from boutique_server.metrics_http import MAX_REQUEST, MetricsServer, answer


def families(text: str) -> dict[str, object]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def test_counters_gauges_and_histograms_read_back_exactly() -> None:
    registry = Registry()
    requests = registry.counter("boutique_requests", "Requests answered.", ["command", "outcome"])
    requests.inc(("PUT", "ok"))
    requests.inc(("PUT", "ok"))
    requests.inc(("GET", 'odd "name"\\\n'))
    registry.gauge("boutique_connections", "Open client connections.", lambda: [((), 3)])
    latency = registry.histogram("boutique_request_seconds", "Latency.", ["command"])
    for value in (0.0004, 0.003, 0.003, 7.0, 60.0):
        latency.observe(value, ("PUT",))
    parsed = families(registry.render())
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in parsed.values()
        for s in family.samples  # type: ignore[attr-defined]
    }
    assert samples[("boutique_requests_total", (("command", "PUT"), ("outcome", "ok")))] == 2
    assert (
        samples[("boutique_requests_total", (("command", "GET"), ("outcome", 'odd "name"\\\n')))]
        == 1
    )
    assert samples[("boutique_connections", ())] == 3
    bucket = "boutique_request_seconds_bucket"
    assert samples[(bucket, (("command", "PUT"), ("le", "0.0005")))] == 1
    assert samples[(bucket, (("command", "PUT"), ("le", "0.005")))] == 3
    assert samples[(bucket, (("command", "PUT"), ("le", "10")))] == 4
    assert samples[(bucket, (("command", "PUT"), ("le", "+Inf")))] == 5
    assert samples[("boutique_request_seconds_count", (("command", "PUT"),))] == 5
    assert math.isclose(samples[("boutique_request_seconds_sum", (("command", "PUT"),))], 67.0064)


def test_a_name_is_registered_once() -> None:
    registry = Registry()
    registry.counter("x", "one")
    with pytest.raises(ValueError, match="already"):
        registry.counter("x", "two")


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", b"200"),
        (b"GET /metrics?x=1 HTTP/1.0\r\n\r\n", b"200"),
        (b"GET / HTTP/1.1\r\n\r\n", b"200"),
        (b"GET /nope HTTP/1.1\r\n\r\n", b"404"),
        (b"POST /metrics HTTP/1.1\r\n\r\n", b"405"),
        (b"\x16\x03\x01 garbage\r\n\r\n", b"400"),
    ],
)
def test_requests_and_their_status(head: bytes, status: bytes) -> None:
    response = answer(head, lambda: "m 1\n")
    assert response.split(b" ", 2)[1] == status
    assert b"Connection: close" in response


async def test_the_endpoint_serves_and_bounds_what_it_reads() -> None:
    registry = Registry()
    registry.counter("boutique_pings", "Pings.").inc()
    server = MetricsServer(registry.render, "127.0.0.1", 0)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.run)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        body = b""
        while chunk := await stream.receive_some(65536):
            body += chunk
        assert body.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"boutique_pings_total 1" in body
        hostile = await trio.open_tcp_stream("127.0.0.1", port)
        await hostile.send_all(b"GET /" + b"a" * (2 * MAX_REQUEST))
        reply = b""
        while chunk := await hostile.receive_some(65536):
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 431")
        nursery.cancel_scope.cancel()
