"""Counters, gauges and histograms, rendered in Prometheus' text exposition format.

A ``Registry`` holds named metrics; ``render()`` produces the text a Prometheus server
scrapes (format 0.0.4: ``# HELP``, ``# TYPE``, then one sample per line). Counting is
cheap on purpose, since the store counts every request: a counter is a dict of floats
keyed by label values, a histogram a list of bucket counts found by bisection.
Gauges are read when rendered, from a callback, so nothing has to keep them current;
so are ``ReadCounter``s, counters some other object already keeps as plain ints.

Label values are escaped as the format wants (backslash, double quote, newline).
The number of label combinations is the caller's to bound: label only by things of
which there are few (command names, outcomes, groups on this node).

This module does no I/O and never imports trio; ``boutique_server.metrics_http``
serves ``render()`` over HTTP.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

Labels = tuple[str, ...]
M = TypeVar("M", bound="Metric")

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
)  # fmt: skip
"""Seconds: from half a millisecond (a local read) to the request timeout and beyond."""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _label_text(names: Sequence[str], values: Labels, extra: str = "") -> str:
    parts = [f'{name}="{_escape(value)}"' for name, value in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.labels = tuple(labels)

    def samples(self) -> Iterable[str]:
        raise NotImplementedError

    def render(self) -> list[str]:
        return [
            f"# HELP {self.name} {self.help.replace(chr(92), chr(92) * 2).replace(chr(10), ' ')}",
            f"# TYPE {self.name} {self.kind}",
            *self.samples(),
        ]


class Counter(Metric):
    """A value that only goes up (restarts at 0 with the process). Named without the
    ``_total`` suffix, which the rendering adds, as Prometheus' conventions want."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        if name.endswith("_total"):
            raise ValueError("name a counter without _total; it is added when rendered")
        super().__init__(name + "_total", help_text, labels)
        self.values: dict[Labels, float] = {}

    def inc(self, labels: Labels = (), amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def get(self, labels: Labels = ()) -> float:
        return self.values.get(labels, 0.0)

    def samples(self) -> Iterable[str]:
        for labels, value in sorted(self.values.items()):
            yield f"{self.name}{_label_text(self.labels, labels)} {_number(value)}"


class Gauge(Metric):
    """A value read when rendered: ``read()`` returns ``(labels, value)`` pairs."""

    kind = "gauge"

    def __init__(
        self,
        name: str,
        help_text: str,
        read: Callable[[], Iterable[tuple[Labels, float]]],
        labels: Sequence[str] = (),
    ) -> None:
        super().__init__(name, help_text, labels)
        self.read = read

    def samples(self) -> Iterable[str]:
        for labels, value in sorted(self.read()):
            yield f"{self.name}{_label_text(self.labels, labels)} {_number(value)}"


class ReadCounter(Gauge):
    """A counter kept elsewhere (a plain ``int`` some object already counts), read when
    rendered like a gauge. Named without ``_total``, like ``Counter``."""

    kind = "counter"

    def __init__(
        self,
        name: str,
        help_text: str,
        read: Callable[[], Iterable[tuple[Labels, float]]],
        labels: Sequence[str] = (),
    ) -> None:
        if name.endswith("_total"):
            raise ValueError("name a counter without _total; it is added when rendered")
        super().__init__(name + "_total", help_text, read, labels)


class Histogram(Metric):
    """How often observations fell at or below each bound, their count and their sum."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        help_text: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> None:
        super().__init__(name, help_text, labels)
        if list(buckets) != sorted(set(buckets)) or not buckets:
            raise ValueError("histogram bounds must be distinct and increasing")
        self.bounds = tuple(buckets)
        self.counts: dict[Labels, list[int]] = {}
        self.sums: dict[Labels, float] = {}

    def observe(self, value: float, labels: Labels = ()) -> None:
        counts = self.counts.get(labels)
        if counts is None:
            counts = self.counts[labels] = [0] * (len(self.bounds) + 1)
            self.sums[labels] = 0.0
        counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sums[labels] += value

    def count(self, labels: Labels = ()) -> int:
        return sum(self.counts.get(labels, ()))

    def samples(self) -> Iterable[str]:
        for labels, counts in sorted(self.counts.items()):
            running = 0
            for bound, n in zip((*self.bounds, math.inf), counts, strict=True):
                running += n
                le = 'le="' + _number(bound) + '"'
                yield f"{self.name}_bucket{_label_text(self.labels, labels, le)} {running}"
            yield f"{self.name}_sum{_label_text(self.labels, labels)} {_number(self.sums[labels])}"
            yield f"{self.name}_count{_label_text(self.labels, labels)} {running}"


class Registry:
    """The metrics of one process, rendered together."""

    def __init__(self) -> None:
        self._metrics: dict[str, Metric] = {}

    def add(self, metric: M) -> M:
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name} is already registered")
        self._metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help_text: str, labels: Sequence[str] = ()) -> Counter:
        return self.add(Counter(name, help_text, labels))

    def histogram(
        self,
        name: str,
        help_text: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> Histogram:
        return self.add(Histogram(name, help_text, labels, buckets))

    def gauge(
        self,
        name: str,
        help_text: str,
        read: Callable[[], Iterable[tuple[Labels, float]]],
        labels: Sequence[str] = (),
    ) -> Gauge:
        return self.add(Gauge(name, help_text, read, labels))

    def read_counter(
        self,
        name: str,
        help_text: str,
        read: Callable[[], Iterable[tuple[Labels, float]]],
        labels: Sequence[str] = (),
    ) -> ReadCounter:
        return self.add(ReadCounter(name, help_text, read, labels))

    def render(self) -> str:
        lines: list[str] = []
        for metric in self._metrics.values():
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"
