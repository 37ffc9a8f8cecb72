"""The node's metrics are wired to real counts: scraped over HTTP while clients load
the server, parsed with prometheus_client's parser."""

from __future__ import annotations

import typing
from typing import TYPE_CHECKING, Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from boutique.client import AsyncClient
from boutique.client import NotFound as NotFoundError
from boutique.wire import ErrorCode
from boutique_server import commands as cmd
from boutique_server.metrics_http import MetricsServer
from boutique_server.node_metrics import COMMAND_NAMES, outcome
from boutique_server.protocol import Error, NotFound, Ok, Pong, Text, Value, Values, render

if TYPE_CHECKING:  # conftest is not importable at run time; its fixtures hand these out
    from conftest import Served, StartServer

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(port: int) -> Samples:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_scraped_during_load(served: Served, nursery: trio.Nursery) -> None:
    metrics = MetricsServer(served.server.metrics.render, "127.0.0.1", 0)
    port = await nursery.start(metrics.run)
    before = await scrape(port)
    assert value(before, "boutique_requests_total", command="put", outcome="ok") == 0
    async with AsyncClient("127.0.0.1", served.port) as setup:
        await setup.create("load")
    scraped: list[Samples] = []
    writers_done = trio.Event()

    async def writer(n: int) -> None:
        async with AsyncClient("127.0.0.1", served.port) as client:
            for i in range(100):
                await client.put("load", f"k{n}-{i}", "v")
                assert await client.get("load", f"k{n}-{i}") == "v"

    async def scraper() -> None:
        while not writers_done.is_set():
            scraped.append(await scrape(port))
            await trio.sleep(0.01)

    async with trio.open_nursery() as load:
        load.start_soon(scraper)
        async with trio.open_nursery() as writers:
            for n in range(3):
                writers.start_soon(writer, n)
        writers_done.set()
    async with AsyncClient("127.0.0.1", served.port) as client:
        with pytest.raises(NotFoundError):
            await client.get("nosuchbucket", "k")
    after = await scrape(port)

    assert scraped, "no scrape finished while the load ran"
    assert value(after, "boutique_requests_total", command="put", outcome="ok") == 300
    assert value(after, "boutique_requests_total", command="get", outcome="ok") == 300
    assert value(after, "boutique_requests_total", command="get", outcome="not_found") == 1
    assert value(after, "boutique_request_seconds_count", command="put") == 300
    assert value(after, "boutique_request_seconds_bucket", command="put", le="+Inf") == 300
    assert value(after, "boutique_request_seconds_sum", command="get") > 0
    # Counters only grow: every scrape during the load saw at most what came after.
    puts = [value(s, "boutique_requests_total", command="put", outcome="ok") for s in scraped]
    assert puts == sorted(puts) and puts[-1] <= 300
    # The host loop's fsyncs are timed, and counted alike in STATUS and here.
    syncs = value(after, "boutique_storage_sync_seconds_count")
    # Each writer's 100 puts wait in turn for a sync (concurrent ones may share one).
    assert syncs >= 100
    assert value(after, "boutique_host_loop_total", event="syncs") >= syncs
    assert value(after, "boutique_host_loop_total", event="proposals") > value(
        before, "boutique_host_loop_total", event="proposals"
    )
    # Per range: the bucket "load" lives in range h-n, one group led here.
    assert value(after, "boutique_range_groups", range="h-n") == 1
    assert value(after, "boutique_range_leading", range="h-n") == 1
    assert value(after, "boutique_range_groups", range="a-g") == 0
    assert value(after, "boutique_range_commit_lag", range="h-n") >= 0
    assert value(after, "boutique_range_max_term", range="h-n") >= 1
    groups = value(after, "boutique_groups", state="quiet") + value(
        after, "boutique_groups", state="active"
    )
    assert groups == 2  # the meta group and the bucket's
    assert value(after, "boutique_meta_leader") == 1
    assert value(after, "boutique_meta_commit") >= value(after, "boutique_meta_applied") >= 1
    assert value(after, "boutique_connections") == 0
    assert value(after, "boutique_groups_quarantined") == 0


async def test_auth_failures_and_refusals_are_counted(start_server: StartServer) -> None:
    served = await start_server(password="sesame", max_connections=1)
    conn = await served.connect()
    await conn.send(b"AUTH wrong\nAUTH sesame\n")
    await conn.replies(2)
    second = await served.connect()
    await second.send(b"AUTH sesame\n")
    [busy] = await second.replies(1)
    assert busy.end.startswith(b"ERR BUSY")
    text = served.server.metrics.render()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert value(samples, "boutique_auth_failures_total", port="client") == 1
    assert value(samples, "boutique_auth_failures_total", port="peer") == 0
    assert value(samples, "boutique_connections_refused_total") == 1
    assert value(samples, "boutique_requests_total", command="auth", outcome="auth") == 1
    assert value(samples, "boutique_requests_total", command="auth", outcome="ok") == 1
    assert value(samples, "boutique_connections") >= 1


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (Ok(), "ok"),
        (Pong(), "ok"),
        (Value(b"OK"), "ok"),
        (Value(None), "ok"),
        (Values([b"ERR X"]), "ok"),
        (Text(["ERR TIMEOUT", "NOT FOUND"]), "ok"),
        (NotFound(), "not_found"),
        (Error(ErrorCode.TIMEOUT, "outcome unknown: ends in OK"), "timeout"),
        (Error(ErrorCode.UNAVAILABLE), "unavailable"),
        (Values([b"a"], more="continue with: KEYS b"), "more"),
    ],
)
def test_outcome_is_read_from_the_last_line(reply: Any, expected: str) -> None:
    assert outcome(render(reply)) == expected


def test_every_command_has_a_label() -> None:
    assert set(COMMAND_NAMES) >= set(typing.get_args(cmd.Command))
