"""Every metric the service exports, on an injected CollectorRegistry. Label sets stay small."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Kafka timestamp → accepted: linger + rate-limit pacing + the call, up to catch-up backlogs of minutes or hours.
_END_TO_END_BUCKETS = (0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
_RECORDS_BUCKETS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.records_consumed = Counter(
            "ingestor_records_consumed_total", "Records fetched from Kafka.", ["topic"], registry=r
        )
        self.records_sent = Counter(
            "ingestor_records_sent_total", "Records accepted by Personalize.", ["api"], registry=r
        )
        self.records_superseded = Counter(
            "ingestor_records_superseded_total",
            "Records replaced in the buffer by a newer record of the same id (done when the newer one is accepted).",
            ["api"],
            registry=r,
        )
        self.records_dead_lettered = Counter(
            "ingestor_records_dead_lettered_total",
            "Records written to the dead-letter topic, by stage (decode, validate, api).",
            ["stage"],
            registry=r,
        )
        self.records_skipped = Counter(
            "ingestor_records_skipped_total",
            "Records with nothing to send (tombstones and deletes), by reason.",
            ["reason"],
            registry=r,
        )
        self.api_calls = Counter(
            "ingestor_api_calls_total",
            "Personalize calls by API and outcome (ok, throttled, invalid_input, server_error, client_error, fatal).",
            ["api", "outcome"],
            registry=r,
        )
        self.api_retries = Counter(
            "ingestor_api_retries_total", "Personalize calls retried, by API and reason.", ["api", "reason"], registry=r
        )
        self.api_call_duration = Histogram(
            "ingestor_api_call_duration_seconds",
            "Latency of one Personalize call.",
            ["api"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.records_per_call = Histogram(
            "ingestor_api_call_records",
            "Records carried by one Personalize call.",
            ["api"],
            buckets=_RECORDS_BUCKETS,
            registry=r,
        )
        self.end_to_end = Histogram(
            "ingestor_end_to_end_seconds",
            "From a record's Kafka timestamp to Personalize accepting it (records that carry a timestamp).",
            ["api"],
            buckets=_END_TO_END_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("ingestor_api_calls_in_flight", "Personalize calls in flight now.", registry=r)
        self.buffered = Gauge(
            "ingestor_buffered_records", "Records fetched and not yet done (buffered or in flight).", registry=r
        )
        self.paused_partitions = Gauge(
            "ingestor_paused_partitions",
            "Partitions not read: all at the buffer bound, else the paused ones (held, waiting for a schema).",
            registry=r,
        )
        self.committed_offset = Gauge(
            "ingestor_committed_offset", "Last committed offset per partition.", ["topic", "partition"], registry=r
        )
        self.consumer_lag = Gauge(
            "ingestor_consumer_lag",
            "Records between the high watermark and the committed offset, per partition.",
            ["topic", "partition"],
            registry=r,
        )
        self.commits = Counter("ingestor_commits_total", "Offset commits by outcome.", ["outcome"], registry=r)
        self.last_commit = Gauge(
            "ingestor_last_commit_timestamp_seconds", "Unix time of the last successful commit.", registry=r
        )
        self.rate_limit = Gauge(
            "ingestor_rate_limit_calls_per_second",
            "This replica's current call rate limit per dataset group and API.",
            ["dataset_group", "api"],
            registry=r,
        )
        self.quota_share = Gauge(
            "ingestor_quota_share",
            "This replica's share of the quota per dataset group and API (0..1): by demand, or its partition share.",
            ["dataset_group", "api"],
            registry=r,
        )
        self.quota_peers = Gauge(
            "ingestor_quota_peers",
            "Replicas (this one included) whose quota heartbeats are live; 0 while this one cannot see the topic.",
            registry=r,
        )
        self.quota_heartbeat_errors = Counter(
            "ingestor_quota_heartbeat_errors_total",
            "Quota heartbeats that could not be published or read, by operation (publish, read).",
            ["operation"],
            registry=r,
        )
        self.fatal_errors = Counter(
            "ingestor_fatal_errors_total",
            "Fatal route errors (unknown dataset, access denied, bad credentials).",
            ["api"],
            registry=r,
        )
        self.datasets_held = Gauge(
            "ingestor_datasets_held",
            "Datasets held after a fatal error (nothing sent or committed on them until a probe call succeeds).",
            ["api"],
            registry=r,
        )
        self.registry_requests = Counter(
            "ingestor_schema_registry_requests_total",
            "Writer schema fetches from the Schema Registry by outcome (ok, not_found, error).",
            ["outcome"],
            registry=r,
        )
        self.waiting_for_schema = Gauge(
            "ingestor_records_waiting_for_schema",
            "Records held (in order, per partition) until their writer schema is fetched from the registry.",
            registry=r,
        )
        self.ready = Gauge(
            "ingestor_ready", "1 when the service is ready (joined, broker reachable, no fatal error).", registry=r
        )
        self.broker_up = Gauge(
            "ingestor_broker_up",
            "1 while the Kafka broker answers, 0 from its first transient connection error until it answers again.",
            registry=r,
        )
        self.broker_outages = Counter(
            "ingestor_broker_outages_total",
            "Times the Kafka broker became unreachable (each logged as one WARNING, its end as one INFO).",
            registry=r,
        )
        self.broker_errors_suppressed = Counter(
            "ingestor_broker_errors_suppressed_total",
            "Transient aiokafka connection errors summarised instead of logged, by kind "
            "(connect, metadata, fetch, coordinator, produce, commit).",
            ["kind"],
            registry=r,
        )

    def totals(self) -> dict[str, float]:
        """Counter totals summed over their labels, for the periodic progress log line."""
        counters = {
            "consumed": self.records_consumed,
            "sent": self.records_sent,
            "superseded": self.records_superseded,
            "dead_lettered": self.records_dead_lettered,
            "skipped": self.records_skipped,
            "calls": self.api_calls,
        }
        return {
            name: sum(s.value for m in c.collect() for s in m.samples if s.name.endswith("_total"))
            for name, c in counters.items()
        }
