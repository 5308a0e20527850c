"""Metrics: OpenTelemetry instruments served for Prometheus scrapes.

Nothing here runs per call. The hot path bumps plain integers it already
keeps (decisions by code, cache statistics, store errors); observable
instruments read them when Prometheus scrapes. The only recorded instrument
is the duration of answers that needed the store, a path that already costs
a network round trip.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider

from keysvc.core.errors import ConfigError
from keysvc.core.model import Code
from keysvc.service.events import FollowerState

if TYPE_CHECKING:
    from keysvc.app.supervisor import TaskSupervisor
    from keysvc.core.cache import KeyCache
    from keysvc.service.events import EventFollower
    from keysvc.service.validator import Validator

__all__ = ["install", "install_tasks", "serve_prometheus"]

# Buckets for answers that needed the store: 100 us to 1 s.
_STORE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


def install(
    provider: MeterProvider, validator: Validator, cache: KeyCache, follower: EventFollower
) -> None:
    """Create keysvc's instruments on `provider`, reading the given objects."""
    meter = provider.get_meter("keysvc")

    def decisions(_: CallbackOptions) -> Iterable[Observation]:
        counts = validator.decisions
        return [Observation(counts[code], {"code": code.name}) for code in Code]

    def cache_events(_: CallbackOptions) -> Iterable[Observation]:
        s = cache.stats
        return [
            Observation(s.hits, {"result": "hit"}),
            Observation(s.misses, {"result": "miss"}),
            Observation(s.negative_hits, {"result": "negative_hit"}),
        ]

    def cache_removals(_: CallbackOptions) -> Iterable[Observation]:
        s = cache.stats
        return [
            Observation(s.evictions, {"reason": "lru"}),
            Observation(s.invalidations, {"reason": "event"}),
            Observation(s.flushes, {"reason": "flush"}),
        ]

    meter.create_observable_counter(
        "keysvc.validations", [decisions], unit="{call}", description="Validations by outcome code.")
    meter.create_observable_counter(
        "keysvc.cache.lookups", [cache_events], unit="{lookup}", description="Key cache lookups.")
    meter.create_observable_counter(
        "keysvc.cache.removals", [cache_removals], unit="{entry}",
        description="Cache entries removed: LRU evictions, event invalidations, full flushes.")
    meter.create_observable_gauge(
        "keysvc.cache.size", [lambda _: [Observation(len(cache))]], unit="{key}",
        description="Keys in the cache.")
    meter.create_observable_counter(
        "keysvc.store.errors", [lambda _: [Observation(validator.store_errors)]], unit="{error}",
        description="Store calls on the validation path that failed or timed out.")
    meter.create_observable_counter(
        "keysvc.store.shed", [lambda _: [Observation(validator.store_shed)]], unit="{call}",
        description="Misses answered without asking the store: too many were waiting on it.")
    meter.create_observable_counter(
        "keysvc.last_used.dropped", [lambda _: [Observation(validator.last_used_dropped)]],
        unit="{use}", description="Last-use updates dropped by the write-behind bound.")
    meter.create_observable_gauge(
        "keysvc.events.lag", [lambda _: [Observation(follower.lag_s)]], unit="s",
        description="Seconds since the event follower last confirmed it had read the whole log.")
    meter.create_observable_gauge(
        "keysvc.events.behind", [lambda _: [Observation(int(follower.state is not FollowerState.FOLLOWING))]],
        description="1 while the event follower is not caught up (behind, disconnected or starting).")
    meter.create_observable_counter(
        "keysvc.events.skipped", [lambda _: [Observation(follower.skipped)]], unit="{event}",
        description="Events of a type this version does not know, skipped.")
    meter.create_observable_counter(
        "keysvc.events.applied", [lambda _: [Observation(follower.applied)]], unit="{event}",
        description="Events from the store's log applied to this process's cache.")
    histogram = meter.create_histogram(
        "keysvc.validate.store_duration", unit="s",
        description="Duration of validations that needed the store (misses, counters).",
        explicit_bucket_boundaries_advisory=_STORE_BUCKETS,
    )
    validator.on_store_answer = histogram.record


def install_tasks(provider: MeterProvider, supervisor: TaskSupervisor, follower: EventFollower) -> None:
    """Create the instruments that read supervised state.

    `keysvc_task_up{task}`, `keysvc_task_restarts_total{task}`, and
    `keysvc_events_connected` (the follower's own view, and its task running).
    """
    meter = provider.get_meter("keysvc")

    def connected(_: CallbackOptions) -> Iterable[Observation]:
        # A follower waiting to be restarted reaches nothing, whatever it last knew.
        events_up = all(t.up for t in supervisor.snapshot() if t.name == "events")
        return [Observation(int(follower.connected and events_up))]

    meter.create_observable_gauge(
        "keysvc.events.connected", [connected],
        description="1 while the event follower runs and reaches the store's log.")
    meter.create_observable_gauge(
        "keysvc.task.up",
        [lambda _: [Observation(int(t.up), {"task": t.name}) for t in supervisor.snapshot()]],
        description="1 while the background task runs; 0 while it waits to be restarted.")
    meter.create_observable_counter(
        "keysvc.task.restarts",
        [lambda _: [Observation(t.restarts, {"task": t.name}) for t in supervisor.snapshot()]],
        unit="{restart}", description="Restarts of a background task after it failed.")


def serve_prometheus(listen: str) -> MeterProvider:
    """Start a Prometheus scrape endpoint (`/metrics`) on host:port; return its provider.

    The endpoint is prometheus_client's HTTP server, in a daemon thread.

    Raises:
        ConfigError: the address cannot be bound (named as KEYSVC_METRICS_LISTEN).
    """
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import start_http_server

    from keysvc.app.settings import env_name, split_listen

    address = split_listen(listen)
    assert isinstance(address, tuple)  # Settings refuses unix sockets here
    host, port = address
    try:
        start_http_server(port, addr=host or "0.0.0.0")  # noqa: S104 - the operator chose the address
    except OSError as exc:
        raise ConfigError(f"{env_name('metrics_listen')}: cannot listen on {listen}: "
                          f"{exc.strerror or type(exc).__name__}") from None
    return MeterProvider(metric_readers=[PrometheusMetricReader()])
