"""Transient broker trouble as a summary, not a log storm.

While the Kafka broker is unreachable, aiokafka logs every failed connection attempt, metadata refresh, fetch and
coordinator request, most at ERROR: a two-second outage writes a few hundred lines. ``BrokerLogFilter`` (installed
on aiokafka's loggers) recognises those known transient messages by their template and the error they carry, drops
them and reports them to ``BrokerHealth``, which logs instead:

- one WARNING when the broker becomes unreachable, naming what failed;
- at most one WARNING per ``repeat_every_s`` while it stays unreachable (how long, how many errors);
- one INFO when it answers again (how long it was unreachable, how many errors were suppressed);
- if the connection flaps (more than ``reported_per_window`` outages within ``repeat_every_s``), one summary line
  for the others instead of a pair each;

and exports ``ingestor_broker_up``, ``ingestor_broker_outages_total`` and ``ingestor_broker_errors_suppressed_total``.
Any other aiokafka message (an unknown template, or a known one carrying an unexpected error) passes through
unchanged. The DLQ's per-record "write failed; retrying" line is summarised the same way, and so are the consumer's
failed metadata probes and (during an outage) failed commits. "Answers again" is learned from the consumer (a
metadata round trip, probed every commit interval while the broker is unreachable, or a commit), and only once no
transient error was seen for ``settle_s``, so one outage is one WARNING/INFO pair even while the clients reconnect
one after the other.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from aiokafka.errors import (
    GroupCoordinatorNotAvailableError,
    KafkaConnectionError,
    KafkaTimeoutError,
    NodeNotReadyError,
    NotCoordinatorForGroupError,
    RequestTimedOutError,
)

from ingestor.metrics import Metrics

log = logging.getLogger(__name__)

REPEAT_EVERY_S = 60.0
SETTLE_S = 1.0
REPORTED_PER_WINDOW = 3  # outages logged one by one per REPEAT_EVERY_S; more are summarised (flapping)
DETAIL_CHARS = 300

# Errors that mean "the broker (or the coordinator on it) cannot be reached right now".
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    KafkaConnectionError,
    NodeNotReadyError,
    RequestTimedOutError,
    KafkaTimeoutError,
    GroupCoordinatorNotAvailableError,
    NotCoordinatorForGroupError,
    OSError,  # ConnectionRefusedError, ConnectionResetError, ...
    TimeoutError,
)
# ... except these, which are configuration problems to see at once (a TLS handshake failure is an OSError).
NOT_TRANSIENT: tuple[type[BaseException], ...] = (ssl.SSLError,)


@dataclass(frozen=True, slots=True)
class KnownMessage:
    """A log message (its %-template) that is transient broker trouble when the error it carries (at ``error_arg``
    in the record's args; None: it carries none) is one of ``TRANSIENT_ERRORS``. ``logger``: the logger (or the
    parent of the loggers) that writes it."""

    template: str
    kind: str  # connect, metadata, fetch, coordinator, produce, dlq
    error_arg: int | None
    logger: str = "aiokafka"


# Templates as written in aiokafka 0.14 and ingestor/deadletter.py (tests/unit/test_broker_health.py checks they
# are still in the source).
KNOWN_MESSAGES: tuple[KnownMessage, ...] = (
    KnownMessage('Unable connect to "%s:%s": %s', "connect", 2),
    KnownMessage("Unable connect to node with id %s: %s", "connect", 1),
    KnownMessage('Unable to request metadata from "%s:%s": %s', "metadata", 2),
    KnownMessage("Unable to request metadata from node with id %s: %r", "metadata", 1),
    KnownMessage("Unable to update metadata from %s", "metadata", None),
    KnownMessage("Failed fetch messages from %s: %s", "fetch", 1),
    KnownMessage("Failed fetch offsets from %s: %s", "fetch", 1),
    KnownMessage("Error sending %s to node %s [%s] -- marking coordinator dead", "coordinator", 2),
    KnownMessage("Group Coordinator Request failed: %s", "coordinator", 0),
    KnownMessage("Heartbeat send request failed: %s. Will retry.", "coordinator", 0),
    KnownMessage("Marking the coordinator dead (node %s)for group %s.", "coordinator", None),
    KnownMessage("FindCoordinator Request failed: %s", "coordinator", 0),
    KnownMessage("Heartbeat session expired - marking coordinator dead", "coordinator", None),
    KnownMessage(
        "Heartbeat failed for group %s: coordinator (node %s) is either not started or not valid", "coordinator", None
    ),
    KnownMessage("Cannot send %r to %s: %r", "produce", 2),
    KnownMessage("Could not send %r: %r", "produce", 1),
    KnownMessage("Got error produce response: %s", "produce", 0),
    # The DLQ's own retry line, one per record waiting for the broker; the write is retried until it succeeds.
    KnownMessage("%s: DLQ write failed (%s: %s); retrying", "dlq", 2, logger="ingestor.deadletter"),
)
_BY_TEMPLATE = {m.template: m for m in KNOWN_MESSAGES}
WATCHED_LOGGERS = ("aiokafka", "ingestor.deadletter")  # the filter goes on these and every logger below them


def classify(record: logging.LogRecord) -> str | None:
    """The kind of transient broker trouble ``record`` reports, or None when it is anything else."""
    known = _BY_TEMPLATE.get(record.msg) if isinstance(record.msg, str) else None
    if known is None or not _within(record.name, known.logger):
        return None
    if known.error_arg is not None:
        args = record.args if isinstance(record.args, tuple) else ()
        error = args[known.error_arg] if len(args) > known.error_arg else None
        if not isinstance(error, TRANSIENT_ERRORS) or isinstance(error, NOT_TRANSIENT):
            return None
    return known.kind


class BrokerHealth:
    """Whether the broker answers, learned from transient errors (``failed``) and successes (``answered``).

    A connection that drops over and over (a flapping link, a broker restarting in a loop) is not logged outage by
    outage: at most ``reported_per_window`` outages per ``repeat_every_s`` get their WARNING/INFO pair; the others
    are counted and summarised by ``report()`` (called with the minute's progress report) or with the next reported
    outage. ``ingestor_broker_outages_total`` counts them all.
    """

    def __init__(
        self,
        metrics: Metrics | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        repeat_every_s: float = REPEAT_EVERY_S,
        settle_s: float = SETTLE_S,
        reported_per_window: int = REPORTED_PER_WINDOW,
        logger: logging.Logger = log,
    ) -> None:
        self._metrics = metrics
        self._clock = clock
        self._repeat_every_s = repeat_every_s
        self._settle_s = settle_s
        self._reported_per_window = reported_per_window
        self._log = logger
        self.up = True
        self.down_since: float | None = None
        self.outages = 0
        self._last_failure_at = 0.0
        self._last_line_at = 0.0
        self._suppressed: Counter[str] = Counter()  # this outage, by kind
        self._since_line = 0  # errors since the last line
        self._latest = ""
        self._reported_at: deque[float] = deque()  # when the outages reported one by one began (this window)
        self._reporting = False  # whether the current outage is reported one by one
        self._unreported = _Unreported()
        if metrics is not None:
            metrics.broker_up.set(1)

    @property
    def suppressed(self) -> int:
        """Errors summarised during the current (or last) outage."""
        return sum(self._suppressed.values())

    def failed(self, kind: str, detail: str) -> None:
        """A transient broker error was seen (and not logged): start an outage, or count it in the current one."""
        now = self._clock()
        self._last_failure_at = now
        self._latest = f"{kind}: {detail[:DETAIL_CHARS]}"
        if self._metrics is not None:
            self._metrics.broker_errors_suppressed.labels(kind).inc()
        if self.up:
            self._begin(now, kind)
            return
        self._suppressed[kind] += 1
        self._since_line += 1
        if now - self._last_line_at >= self._repeat_every_s:
            assert self.down_since is not None
            self._log.warning(
                "Kafka broker still unreachable after %.0fs: %d errors in the last %.0fs, %d in all (%s); latest: %s",
                now - self.down_since,
                self._since_line,
                now - self._last_line_at,
                self.suppressed,
                _kinds(self._suppressed),
                self._latest,
                extra={"broker_up": False, "suppressed": dict(self._suppressed)},
            )
            self._last_line_at = now
            self._since_line = 0
            self._reporting = True  # a long outage is reported, whatever the window said at its start

    def _begin(self, now: float, kind: str) -> None:
        self.up = False
        self.down_since = self._last_line_at = now
        self.outages += 1
        self._suppressed = Counter({kind: 1})
        self._since_line = 0
        if self._metrics is not None:
            self._metrics.broker_up.set(0)
            self._metrics.broker_outages.inc()
        while self._reported_at and now - self._reported_at[0] >= self._repeat_every_s:
            self._reported_at.popleft()
        self._reporting = len(self._reported_at) < self._reported_per_window
        if not self._reporting:
            return  # flapping: counted, summarised later
        self._reported_at.append(now)
        self.report()
        self._log.warning(
            "Kafka broker unreachable (%s); aiokafka's connection errors are summarised until it answers again",
            self._latest,
            extra={"broker_up": False, "failed": kind},
        )

    def answered(self) -> None:
        """The broker answered a request. Ends an outage once no transient error was seen for ``settle_s``."""
        if self.up:
            return
        now = self._clock()
        if now - self._last_failure_at < self._settle_s:
            return  # clients are still reconnecting: wait until the errors stop
        assert self.down_since is not None
        self.up = True
        if self._metrics is not None:
            self._metrics.broker_up.set(1)
        lasted = now - self.down_since
        if not self._reporting:
            self._unreported.add(lasted, self._suppressed)
            return
        self._log.info(
            "Kafka broker answers again after %.1fs unreachable; %d broker errors suppressed (%s)",
            lasted,
            self.suppressed,
            _kinds(self._suppressed),
            extra={"broker_up": True, "outage_s": round(lasted, 3), "suppressed": dict(self._suppressed)},
        )

    def report(self) -> None:
        """Log the outages not reported one by one (a flapping connection), if any, in one line."""
        u = self._unreported
        if not u.outages:
            return
        self._log.warning(
            "Kafka broker connection flapping: %d more brief outages (%.1fs in all, %d broker errors suppressed: %s) "
            "not logged one by one",
            u.outages,
            u.seconds,
            sum(u.errors.values()),
            _kinds(u.errors),
            extra={"broker_up": self.up, "outages": u.outages, "suppressed": dict(u.errors)},
        )
        self._unreported = _Unreported()

    # ------------------------------------------------------------------ the log filter

    def filter(self) -> BrokerLogFilter:
        return BrokerLogFilter(self)

    def install(self, loggers: Iterable[logging.Logger] | None = None) -> BrokerLogFilter:
        """Put a filter on the loggers that write known messages (every ``aiokafka.*`` logger that exists: importing
        aiokafka creates them all; and the DLQ's). Returns it, for ``uninstall``."""
        f = self.filter()
        f.loggers = watched_loggers() if loggers is None else list(loggers)
        for logger in f.loggers:
            logger.addFilter(f)
        return f


@dataclass
class _Unreported:
    outages: int = 0
    seconds: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)

    def add(self, seconds: float, errors: Counter[str]) -> None:
        self.outages += 1
        self.seconds += seconds
        self.errors.update(errors)


class BrokerLogFilter(logging.Filter):
    """Drops aiokafka's known transient broker messages and reports them to a ``BrokerHealth``."""

    def __init__(self, health: BrokerHealth) -> None:
        super().__init__()
        self.health = health
        self.loggers: list[logging.Logger] = []

    def filter(self, record: logging.LogRecord) -> bool:
        kind = classify(record)
        if kind is None:
            return True
        try:
            detail = record.getMessage()
        except (TypeError, ValueError):  # pragma: no cover - a malformed record: still summarised
            detail = str(record.msg)
        self.health.failed(kind, detail)
        return False

    def uninstall(self) -> None:
        for logger in self.loggers:
            logger.removeFilter(self)
        self.loggers = []


def watched_loggers() -> list[logging.Logger]:
    import aiokafka  # noqa: F401 - importing it creates its module loggers

    names = {n for n in logging.root.manager.loggerDict if any(_within(n, w) for w in WATCHED_LOGGERS)}
    return [logging.getLogger(n) for n in sorted(names | set(WATCHED_LOGGERS))]


def _within(name: str, parent: str) -> bool:
    return name == parent or name.startswith(parent + ".")


def _kinds(counts: Counter[str]) -> str:
    return ", ".join(f"{kind} {n}" for kind, n in counts.most_common()) or "none"
