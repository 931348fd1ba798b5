"""Broker health: aiokafka's transient connection errors become one WARNING per outage, one INFO at its end,
rate-limited repeats in between and a metric; anything else aiokafka logs stays visible. Fake clock throughout."""

from __future__ import annotations

import ast
import json
import logging
import ssl
from collections.abc import Iterator
from pathlib import Path

import aiokafka
import pytest
from aiokafka import TopicPartition as KafkaTP
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    NodeNotReadyError,
    RequestTimedOutError,
    TopicAuthorizationFailedError,
)

from ingestor import deadletter
from ingestor.broker_health import KNOWN_MESSAGES, BrokerHealth, classify, watched_loggers
from ingestor.config import Settings
from ingestor.metrics import Metrics
from ingestor.model import TopicPartition
from ingestor.pipeline import Pipeline
from ingestor.sender import Sender
from ingestor.source import KafkaSource
from tests.fakes import FakePersonalize, FakeProducer

CONFIG = Path(__file__).parents[2] / "config"
HEALTH_LOGGER = "ingestor.broker_health"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def value(metrics: Metrics, name: str, **labels: str) -> float:
    got = metrics.registry.get_sample_value(name, labels)
    return 0.0 if got is None else got


def record(logger: str, msg: str, *args: object, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(logger, level, __file__, 1, msg, args, None)


def health_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == HEALTH_LOGGER]


# ---------------------------------------------------------------------- classification


def test_known_templates_are_still_in_the_installed_aiokafka() -> None:
    """A template aiokafka reworded would silently let its storm through again: fail here instead."""
    templates: set[str] = set()
    for path in [*Path(aiokafka.__file__).parent.rglob("*.py"), Path(deadletter.__file__)]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in {"error", "warning", "exception", "info"}
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                templates.add(node.args[0].value)
    missing = [m.template for m in KNOWN_MESSAGES if m.template not in templates]
    assert not missing, f"aiokafka {aiokafka.__version__} or ingestor.deadletter no longer logs {missing}"


@pytest.mark.parametrize(
    ("logger", "msg", "args", "kind"),
    [
        ("aiokafka", "Unable connect to node with id %s: %s", (1, ConnectionRefusedError(111, "refused")), "connect"),
        ("aiokafka", 'Unable connect to "%s:%s": %s', ("h", 9092, OSError("unreachable")), "connect"),
        ("aiokafka", "Unable to update metadata from %s", ([1],), "metadata"),
        ("aiokafka.consumer.fetcher", "Failed fetch messages from %s: %s", (1, NodeNotReadyError("x")), "fetch"),
        (
            "aiokafka.consumer.group_coordinator",
            "Group Coordinator Request failed: %s",
            (NodeNotReadyError("x"),),
            "coordinator",
        ),
        (
            "aiokafka.consumer.group_coordinator",
            "Error sending %s to node %s [%s] -- marking coordinator dead",
            ("HeartbeatRequest", 1, KafkaConnectionError("closed")),
            "coordinator",
        ),
        ("aiokafka.producer.sender", "Cannot send %r to %s: %r", ("Produce", 1, RequestTimedOutError()), "produce"),
        ("aiokafka.producer.sender", "Got error produce response: %s", (NodeNotReadyError("x"),), "produce"),
        (
            "ingestor.deadletter",
            "%s: DLQ write failed (%s: %s); retrying",
            ("t/0@1", "NodeNotReadyError", NodeNotReadyError("x")),
            "dlq",
        ),
    ],
)
def test_known_transient_messages_are_classified(logger: str, msg: str, args: tuple[object, ...], kind: str) -> None:
    assert classify(record(logger, msg, *args)) == kind


@pytest.mark.parametrize(
    ("logger", "msg", "args"),
    [
        # a known template carrying an error that is not about reaching the broker
        ("aiokafka.consumer.fetcher", "Failed fetch messages from %s: %s", (1, TopicAuthorizationFailedError())),
        ("aiokafka.consumer.group_coordinator", "Group Coordinator Request failed: %s", (KafkaError("odd"),)),
        # a TLS handshake failure is an OSError, but a configuration problem
        ("aiokafka", "Unable connect to node with id %s: %s", (1, ssl.SSLCertVerificationError(1, "verify failed"))),
        # unknown messages
        ("aiokafka.consumer.fetcher", "Unexpected error in fetcher routine", ()),
        ("aiokafka.consumer.group_coordinator", "Heartbeat failed: %r", (KafkaError("x"),)),
        # the same words from another logger
        ("ingestor.source", "Unable to update metadata from %s", ([1],)),
        ("aiokafka.producer.sender", "%s: DLQ write failed (%s: %s); retrying", ("t/0@1", "E", KafkaError())),
        # the DLQ's retry line for an error that is not about reaching the broker
        ("ingestor.deadletter", "%s: DLQ write failed (%s: %s); retrying", ("t/0@1", "E", KafkaError("odd"))),
    ],
)
def test_other_messages_are_not_classified(logger: str, msg: str, args: tuple[object, ...]) -> None:
    assert classify(record(logger, msg, *args)) is None


# ---------------------------------------------------------------------- the state machine


def test_an_outage_is_one_warning_and_one_info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=HEALTH_LOGGER)
    clock, metrics = Clock(), Metrics()
    health = BrokerHealth(metrics, clock=clock, settle_s=1.0)
    assert value(metrics, "ingestor_broker_up") == 1
    health.answered()  # while up: nothing to say
    assert health_lines(caplog) == []

    for i in range(540):  # ~2.5 s of errors, as aiokafka writes them
        clock.now += 0.005
        health.failed(("connect", "metadata", "fetch")[i % 3], f"error {i}")
    assert not health.up and value(metrics, "ingestor_broker_up") == 0
    health.answered()  # a request succeeded while the last error is fresh: clients are still reconnecting
    assert not health.up
    clock.now += 1.0
    health.answered()
    assert health.up and value(metrics, "ingestor_broker_up") == 1

    lines = health_lines(caplog)
    assert [r.levelno for r in lines] == [logging.WARNING, logging.INFO]
    assert "unreachable (connect: error 0)" in lines[0].getMessage()
    assert "answers again after 3.7s unreachable; 540 broker errors suppressed" in lines[1].getMessage()
    assert "connect 180, metadata 180, fetch 180" in lines[1].getMessage()
    assert value(metrics, "ingestor_broker_outages_total") == 1
    assert value(metrics, "ingestor_broker_errors_suppressed_total", kind="connect") == 180
    assert value(metrics, "ingestor_broker_errors_suppressed_total", kind="fetch") == 180


def test_a_long_outage_repeats_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=HEALTH_LOGGER)
    clock = Clock()
    health = BrokerHealth(Metrics(), clock=clock, repeat_every_s=60.0)
    for _ in range(1200):  # 150 s, eight errors a second
        health.failed("connect", "Connection refused")
        clock.now += 0.125
    clock.now += 5
    health.answered()
    lines = health_lines(caplog)
    assert [r.levelno for r in lines] == [logging.WARNING] * 3 + [logging.INFO]
    assert "still unreachable after 60s: 480 errors in the last 60s, 481 in all (connect 481)" in lines[1].getMessage()
    assert "still unreachable after 120s: 480 errors in the last 60s, 961 in all" in lines[2].getMessage()
    assert "after 155.0s unreachable; 1200 broker errors suppressed" in lines[3].getMessage()


def test_each_outage_is_counted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=HEALTH_LOGGER)
    clock, metrics = Clock(), Metrics()
    health = BrokerHealth(metrics, clock=clock, settle_s=0.5)
    for _ in range(3):
        for _ in range(10):
            health.failed("coordinator", "NodeNotReadyError")
            clock.now += 0.1
        clock.now += 1
        health.answered()
    assert value(metrics, "ingestor_broker_outages_total") == 3
    assert [r.levelno for r in health_lines(caplog)] == [logging.WARNING, logging.INFO] * 3
    assert "10 broker errors suppressed (coordinator 10)" in health_lines(caplog)[-1].getMessage()


def test_a_flapping_connection_is_summarised_not_logged_pair_by_pair(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=HEALTH_LOGGER)
    clock, metrics = Clock(), Metrics()
    health = BrokerHealth(metrics, clock=clock, settle_s=1.0, repeat_every_s=60.0, reported_per_window=3)

    def outage(errors: int = 5) -> None:
        for _ in range(errors):
            health.failed("produce", "NodeNotReadyError")
            clock.now += 0.1
        clock.now += 1.5  # 2 s down in all
        health.answered()
        clock.now += 2

    for _ in range(10):  # one outage every 4 s: 40 s
        outage()
    assert value(metrics, "ingestor_broker_outages_total") == 10 and health.up
    lines = health_lines(caplog)
    assert [r.levelno for r in lines] == [logging.WARNING, logging.INFO] * 3  # the window's first three
    health.report()  # the minute's progress report
    summary = health_lines(caplog)[-1]
    assert summary.levelno == logging.WARNING
    assert "flapping: 7 more brief outages (14.0s in all, 35 broker errors suppressed: produce 35)" in (
        summary.getMessage()
    )
    health.report()
    assert len(health_lines(caplog)) == 7, "reported once"

    clock.now += 60  # a new window: outages are reported one by one again
    for _ in range(2):
        outage()
    clock.now += 60
    outage()
    assert len(health_lines(caplog)) == 7 + 2 * 3
    health.report()
    assert len(health_lines(caplog)) == 7 + 2 * 3


def test_unsummarised_outages_are_reported_before_the_next_reported_one(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=HEALTH_LOGGER)
    clock = Clock()
    health = BrokerHealth(Metrics(), clock=clock, settle_s=1.0, repeat_every_s=60.0, reported_per_window=1)
    for _ in range(3):
        health.failed("connect", "refused")
        clock.now += 2
        health.answered()
    clock.now += 60
    health.failed("metadata", "timed out")
    messages = [r.getMessage() for r in health_lines(caplog)]
    assert len(messages) == 4
    assert "flapping: 2 more brief outages (4.0s in all, 2 broker errors suppressed: connect 2)" in messages[2]
    assert "unreachable (metadata: timed out)" in messages[3]


def test_a_long_outage_during_flapping_is_still_reported(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=HEALTH_LOGGER)
    clock = Clock()
    health = BrokerHealth(Metrics(), clock=clock, settle_s=1.0, repeat_every_s=60.0, reported_per_window=1)
    health.failed("connect", "refused")
    clock.now += 2
    health.answered()
    health.failed("connect", "refused")  # a second outage in the window: not reported at its start
    assert len(health_lines(caplog)) == 2
    for _ in range(70):
        clock.now += 1
        health.failed("connect", "refused")
    clock.now += 2
    health.answered()
    messages = [r.getMessage() for r in health_lines(caplog)]
    assert len(messages) == 4
    assert "still unreachable after 60s" in messages[2]
    assert "answers again after 72.0s" in messages[3]


# ---------------------------------------------------------------------- the filter on aiokafka's loggers


@pytest.fixture
def installed(caplog: pytest.LogCaptureFixture) -> Iterator[tuple[BrokerHealth, Clock]]:
    caplog.set_level(logging.INFO)
    clock = Clock()
    health = BrokerHealth(Metrics(), clock=clock)
    f = health.install()
    try:
        yield health, clock
    finally:
        f.uninstall()


def test_the_filter_covers_aiokafkas_loggers() -> None:
    names = {lg.name for lg in watched_loggers()}
    assert {
        "aiokafka",
        "aiokafka.conn",
        "aiokafka.consumer.fetcher",
        "aiokafka.consumer.group_coordinator",
        "aiokafka.producer.sender",
        "ingestor.deadletter",
    } <= names


def test_transient_errors_are_summarised_and_unexpected_ones_stay(
    installed: tuple[BrokerHealth, Clock], caplog: pytest.LogCaptureFixture
) -> None:
    health, clock = installed
    client = logging.getLogger("aiokafka")
    fetcher = logging.getLogger("aiokafka.consumer.fetcher")
    coordinator = logging.getLogger("aiokafka.consumer.group_coordinator")
    for _ in range(100):
        client.error("Unable connect to node with id %s: %s", 1, ConnectionRefusedError(111, "Connection refused"))
        client.error("Unable to update metadata from %s", [1])
        fetcher.error("Failed fetch messages from %s: %s", 1, NodeNotReadyError("Attempt to send to not ready node"))
        coordinator.error("Group Coordinator Request failed: %s", NodeNotReadyError("not ready"))
    fetcher.error("Failed fetch messages from %s: %s", 1, TopicAuthorizationFailedError())
    fetcher.exception("Unexpected error in fetcher routine")
    clock.now += 5
    health.answered()

    seen = [(r.name, r.levelname, r.getMessage()) for r in caplog.records]
    assert [s for s in seen if s[0].startswith("aiokafka")] == [
        (
            "aiokafka.consumer.fetcher",
            "ERROR",
            "Failed fetch messages from 1: [Error 29] TopicAuthorizationFailedError",
        ),
        ("aiokafka.consumer.fetcher", "ERROR", "Unexpected error in fetcher routine"),
    ]
    mine = [s for s in seen if s[0] == HEALTH_LOGGER]
    assert [s[1] for s in mine] == ["WARNING", "INFO"]
    assert "Unable connect to node with id 1: [Errno 111] Connection refused" in mine[0][2]
    assert "400 broker errors suppressed (connect 100, metadata 100, fetch 100, coordinator 100)" in mine[1][2]


def test_uninstall_lets_everything_through(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    health = BrokerHealth(Metrics(), clock=Clock())
    health.install().uninstall()
    logging.getLogger("aiokafka").error("Unable to update metadata from %s", [1])
    assert [r.name for r in caplog.records] == ["aiokafka"]
    assert health.up


# ---------------------------------------------------------------------- what the consumer tells it


class FakeConsumer:
    def __init__(self) -> None:
        self.topics_error: Exception | None = None

    async def topics(self) -> set[str]:
        if self.topics_error is not None:
            raise self.topics_error
        return {"catalog.items"}

    def assignment(self) -> set[object]:
        return set()


def make_source(clock: Clock) -> tuple[KafkaSource, FakeConsumer, Metrics]:
    settings = Settings(
        kafka={"dead_letter_topic": "dlq"},
        routes=[
            {
                "topic": "catalog.items",
                "kind": "items",
                "dataset_arn": "arn:aws:personalize:us-east-1:123456789012:dataset/shop/ITEMS",
                "schema": CONFIG / "schemas/items.avsc",
            }
        ],
    )
    metrics = Metrics()
    pipeline = Pipeline(
        settings, Sender(FakePersonalize(), metrics, settings.personalize.retry), FakeProducer(), metrics
    )
    consumer = FakeConsumer()
    source = KafkaSource(settings, pipeline, metrics, consumer=consumer, clock=clock)  # type: ignore[arg-type]
    return source, consumer, metrics


async def test_the_metadata_probe_reports_to_broker_health(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    clock = Clock()
    source, consumer, metrics = make_source(clock)
    consumer.topics_error = KafkaError("Unable to get cluster metadata over all known brokers")
    for _ in range(5):
        assert not await source.check_broker()
        clock.now += 1
    assert value(metrics, "ingestor_broker_up") == 0
    consumer.topics_error = None
    assert await source.check_broker()
    assert value(metrics, "ingestor_broker_up") == 1 and source.broker_ok_at == clock.now
    lines = [(r.name, r.levelname) for r in caplog.records]
    assert lines == [(HEALTH_LOGGER, "WARNING"), (HEALTH_LOGGER, "INFO")], caplog.text
    assert "5 broker errors suppressed (metadata 5)" in caplog.records[-1].getMessage()


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_the_summary_lines_render_as_json_fields() -> None:
    """The structured fields (broker_up, suppressed) survive into the service's JSON log line."""
    from ingestor.logs import configure_logging

    root = logging.getLogger()
    touched = ("aiokafka", "botocore", "aiobotocore", "aiohttp.access")
    saved = root.handlers[:], root.level, {n: logging.getLogger(n).level for n in touched}
    try:
        configure_logging("INFO", "json")
        formatter = root.handlers[0].formatter
    finally:
        root.handlers[:], level, levels = saved
        root.setLevel(level)
        for name, lvl in levels.items():
            logging.getLogger(name).setLevel(lvl)
    handler = ListHandler()
    handler.setFormatter(formatter)
    logger = logging.getLogger("tests.broker_health.json")
    logger.propagate, logger.level = False, logging.INFO
    logger.addHandler(handler)
    try:
        clock = Clock()
        health = BrokerHealth(Metrics(), clock=clock, logger=logger)
        health.failed("connect", "refused")
        clock.now += 2
        health.answered()
    finally:
        logger.removeHandler(handler)
    parsed = [json.loads(line) for line in handler.lines]
    assert [p["level"] for p in parsed] == ["warning", "info"]
    assert parsed[0]["broker_up"] is False and parsed[0]["failed"] == "connect"
    assert parsed[1]["broker_up"] is True and parsed[1]["suppressed"] == {"connect": 1}
    assert parsed[1]["outage_s"] == 2.0


class CommittingConsumer(FakeConsumer):
    def __init__(self) -> None:
        super().__init__()
        self.commit_error: Exception | None = None
        self.tp = KafkaTP("catalog.items", 0)

    def assignment(self) -> set[object]:
        return {self.tp}

    async def commit(self, offsets: dict[KafkaTP, int]) -> None:
        if self.commit_error is not None:
            raise self.commit_error


async def test_commit_failures_during_an_outage_are_counted_not_logged(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO)
    clock = Clock()
    source, _, metrics = make_source(clock)
    consumer = CommittingConsumer()
    source.consumer = consumer  # type: ignore[assignment]
    monkeypatch.setattr(source.pipeline.tracker, "to_commit", lambda owned: {TopicPartition("catalog.items", 0): 5})
    monkeypatch.setattr(source.pipeline.tracker, "committed", lambda offsets: None)

    consumer.commit_error = KafkaConnectionError("Connection at 127.0.0.1:9092 closed")
    assert await source.commit() == {}  # the broker is not known to be down: a commit failure is worth a line
    assert [r.getMessage()[:13] for r in caplog.records] == ["commit failed"]
    source.broker_health.failed("connect", "refused")
    for _ in range(5):
        clock.now += 1
        assert await source.commit() == {}
    assert value(metrics, "ingestor_broker_errors_suppressed_total", kind="commit") == 5
    assert [r.name for r in caplog.records] == ["ingestor.source", HEALTH_LOGGER]
    consumer.commit_error = None
    clock.now += 1
    assert await source.commit() == {TopicPartition("catalog.items", 0): 5}
    assert source.broker_health.up
    assert "answers again after 6.0s unreachable; 6 broker errors suppressed (commit 5, connect 1)" in (
        caplog.records[-1].getMessage()
    )
