"""Sends one batch to Personalize and reports an outcome per record.

Layers, from the inside out:

* botocore does NOT retry (``max_attempts=1``): every attempt must pass through our rate limiter, since the quota is
  shared by all replicas and botocore's adaptive bucket is per client;
* tenacity retries throttling, 5xx, timeouts and connection errors with exponential back-off and full jitter,
  within the per-record budget (``personalize.retry``: attempts and seconds since the record's first attempt);
* ``InvalidInputException`` rejects a whole call: the batch is split in halves until the offending records are
  isolated; the rest is delivered, only those are rejected;
* fatal errors (unknown dataset, access denied, bad credentials) raise ``FatalRouteError``: nothing is dead-lettered.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import botocore.exceptions
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_any,
    wait_random_exponential,
)
from tenacity.stop import stop_base

from ingestor.batcher import Pending
from ingestor.config import RetrySettings
from ingestor.errors import DeliveryError, FatalRouteError
from ingestor.events import PendingEvent
from ingestor.metrics import Metrics
from ingestor.ratelimit import RateLimiter

FATAL_CODES = frozenset(
    {
        "ResourceNotFoundException",
        "AccessDeniedException",
        "AccessDenied",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "InvalidClientTokenId",
        "ExpiredTokenException",
        "ExpiredToken",
        "MissingAuthenticationTokenException",
        "IncompleteSignature",
    }
)
THROTTLING_CODES = frozenset(
    {"ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded", "SlowDown"}
)


class _Rejected(Exception):
    """InvalidInputException: the call (as a whole) was rejected."""


class ThrottledError(DeliveryError):
    pass


class PersonalizeClient(Protocol):
    async def put_items(self, **kwargs: Any) -> Any: ...
    async def put_users(self, **kwargs: Any) -> Any: ...
    async def put_events(self, **kwargs: Any) -> Any: ...


@dataclass(frozen=True, slots=True)
class Target:
    """Where a dataset's batches go."""

    api: str  # PutItems | PutUsers | PutEvents
    dataset_arn: str
    tracking_id: str | None = None  # PutEvents: the event tracker's id

    @property
    def list_key(self) -> str:
        return "items" if self.api == "PutItems" else "users"


@dataclass
class Outcome:
    accepted: list[Pending] = field(default_factory=list)
    rejected: list[tuple[Pending, str]] = field(default_factory=list)


class RetriesExhausted(DeliveryError):
    """The retry budget ran out. A bisected batch may be partly done: ``outcome`` holds what was accepted or
    rejected before that, ``failed`` the records whose fate is unknown (to be retried later or dead-lettered)."""

    def __init__(self, message: str, outcome: Outcome, failed: list[Pending]) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.failed = failed


class FatalBatchError(FatalRouteError):
    """A fatal error in the middle of a batch's delivery. A bisected batch may be partly done: ``outcome`` holds
    what was accepted or rejected before the fatal call, ``failed`` the records whose fate is unknown."""

    def __init__(self, message: str, outcome: Outcome, failed: list[Pending]) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.failed = failed


def _unsettled(batch: list[Pending], outcome: Outcome) -> list[Pending]:
    settled = {id(p) for p in outcome.accepted} | {id(p) for p, _ in outcome.rejected}
    return [p for p in batch if id(p) not in settled]


class _RecordBudget(stop_base):
    """Stop retrying once the oldest record of the batch has spent its time budget."""

    def __init__(self, batch: list[Pending], max_time_s: float, clock: Callable[[], float]) -> None:
        self._batch, self._max, self._clock = batch, max_time_s, clock

    def __call__(self, retry_state: RetryCallState) -> bool:
        starts = [p.first_attempt for p in self._batch if p.first_attempt is not None]
        return bool(starts) and self._clock() - min(starts) >= self._max


class Slot:
    """One of the pipeline's shared call slots (``personalize.max_in_flight``), held by one batch's delivery.

    The slot bounds calls on the wire, so it is given back while the delivery waits — in a retry back-off or for
    its rate limiter — and taken again just before the next attempt: a throttled dataset sleeping through long
    back-offs must not hold slots the other datasets need. ``release`` is idempotent, so the owner's final release
    is right whether or not the slot is held at that moment (after a cancellation, say)."""

    def __init__(self, semaphore: asyncio.Semaphore) -> None:
        self._semaphore = semaphore
        self.held = True  # the dispatcher took it before sending

    async def acquire(self) -> None:
        if not self.held:
            await self._semaphore.acquire()
            self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self._semaphore.release()


class Sender:
    def __init__(
        self,
        client: PersonalizeClient,
        metrics: Metrics,
        retry: RetrySettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._client = client
        self._metrics = metrics
        self._retry = retry
        self._clock = clock
        self._sleep = sleep

    async def send(
        self,
        target: Target,
        batch: list[Pending],
        limiter: RateLimiter,
        *,
        prepaid: bool = False,
        slot: Slot | None = None,
    ) -> Outcome:
        """Deliver ``batch``; returns accepted and rejected records.

        ``prepaid``: the caller already took the rate-limit token for the first attempt. ``slot``: the caller's call
        slot, given back during back-offs and rate-limit waits and taken again for each attempt. Raises RetriesExhausted
        (with what was settled before) when the retry budget is spent, FatalBatchError (a FatalRouteError, with what
        was settled before) when the route cannot work.
        """
        outcome = Outcome()
        now = self._clock()
        for p in batch:
            if p.first_attempt is None:
                p.first_attempt = now
        try:
            await self._deliver(target, batch, limiter, outcome, [prepaid], slot)
        except DeliveryError as exc:
            raise RetriesExhausted(str(exc), outcome, _unsettled(batch, outcome)) from exc
        except FatalRouteError as exc:
            raise FatalBatchError(str(exc), outcome, _unsettled(batch, outcome)) from exc
        return outcome

    async def _deliver(
        self,
        target: Target,
        batch: list[Pending],
        limiter: RateLimiter,
        outcome: Outcome,
        prepaid: list[bool],
        slot: Slot | None,
    ) -> None:
        try:
            await self._call_with_retries(target, batch, limiter, prepaid, slot)
        except _Rejected as exc:
            if len(batch) == 1:
                outcome.rejected.append((batch[0], f"Personalize rejected the record (InvalidInputException): {exc}"))
                return
            mid = len(batch) // 2
            await self._deliver(target, batch[:mid], limiter, outcome, prepaid, slot)
            await self._deliver(target, batch[mid:], limiter, outcome, prepaid, slot)
            return
        outcome.accepted.extend(batch)

    async def _call_with_retries(
        self, target: Target, batch: list[Pending], limiter: RateLimiter, prepaid: list[bool], slot: Slot | None
    ) -> None:
        # Fast path: the first attempt runs without building a tenacity controller (most calls succeed at once, and
        # building one per call costs ~7 % of the service's CPU at high call rates). A retryable failure hands over
        # to tenacity with that failure as its first attempt, so attempts, waits and budgets are exactly as before.
        first: DeliveryError | None = None
        try:
            await self._attempt(target, batch, limiter, prepaid, slot)
            return
        except DeliveryError as exc:
            first = exc

        async def back_off(seconds: float) -> None:
            if slot is not None:
                slot.release()  # nothing on the wire while sleeping
            await self._sleep(seconds)

        retrying = AsyncRetrying(
            retry=retry_if_exception_type(DeliveryError),
            wait=wait_random_exponential(multiplier=self._retry.base_delay_s, max=self._retry.max_delay_s),
            stop=stop_any(
                _RecordBudget(batch, self._retry.max_time_s, self._clock), stop_after_attempt(self._retry.max_attempts)
            ),
            sleep=back_off,
            before_sleep=lambda state: self._count_retry(target, state),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                if first is not None:
                    failed, first = first, None
                    raise failed
                await self._attempt(target, batch, limiter, prepaid, slot)

    async def _attempt(
        self, target: Target, batch: list[Pending], limiter: RateLimiter, prepaid: list[bool], slot: Slot | None
    ) -> None:
        if prepaid[0]:
            prepaid[0] = False  # the first attempt's token was taken by the dispatcher
        else:
            if slot is not None:
                slot.release()  # pace without holding a slot (as the dispatcher does)
            await limiter.acquire()
        if slot is not None:
            await slot.acquire()
        try:
            await self._call(target, batch)
        except ThrottledError:
            limiter.throttled()
            raise
        limiter.succeeded()

    def _count_retry(self, target: Target, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        reason = "throttled" if isinstance(exc, ThrottledError) else "error"
        self._metrics.api_retries.labels(target.api, reason).inc()

    async def _call(self, target: Target, batch: list[Pending]) -> None:
        """One API call; maps foreign exceptions to ours at this boundary."""
        m = self._metrics
        method, kwargs = _request(self._client, target, batch)
        m.in_flight.inc()
        start = self._clock()
        outcome = "ok"
        try:
            await method(**kwargs)
        except botocore.exceptions.ClientError as exc:
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            message = str(err.get("Message", "")) or str(exc)
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            if code == "InvalidInputException":
                outcome = "invalid_input"
                raise _Rejected(message) from exc
            if code in FATAL_CODES:
                outcome = "fatal"
                raise FatalRouteError(_fatal_hint(target, code, message)) from exc
            if code in THROTTLING_CODES:
                outcome = "throttled"
                raise ThrottledError(f"{target.api} throttled: {message}") from exc
            outcome = "server_error" if status >= 500 or status == 0 else "client_error"
            raise DeliveryError(f"{target.api} failed with {code or status}: {message}") from exc
        except botocore.exceptions.NoCredentialsError as exc:
            outcome = "fatal"
            raise FatalRouteError(_fatal_hint(target, "NoCredentials", str(exc))) from exc
        except (botocore.exceptions.BotoCoreError, aiohttp.ClientError, TimeoutError, OSError) as exc:
            outcome = "server_error"
            raise DeliveryError(f"{target.api} failed: {type(exc).__name__}: {exc}") from exc
        finally:
            m.in_flight.dec()
            m.api_calls.labels(target.api, outcome).inc()
            m.api_call_duration.labels(target.api).observe(self._clock() - start)
            m.records_per_call.labels(target.api).observe(len(batch))


def _request(
    client: PersonalizeClient, target: Target, batch: list[Pending]
) -> tuple[Callable[..., Awaitable[Any]], dict[str, Any]]:
    """The client method and its arguments for one call."""
    if target.api == "PutEvents":
        first = batch[0]
        assert isinstance(first, PendingEvent), "PutEvents batches hold PendingEvent records"
        kwargs = {
            "trackingId": target.tracking_id,
            "userId": first.record_id,
            "sessionId": first.session_id,
            # sentAt as an aware datetime: botocore would parse an int through dateutil twice per event
            "eventList": [{**p.request, "sentAt": _utc(p.request["sentAt"])} for p in batch],
        }
        return client.put_events, kwargs
    method = client.put_items if target.api == "PutItems" else client.put_users
    return method, {"datasetArn": target.dataset_arn, target.list_key: [p.request for p in batch]}


def _utc(epoch_s: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(epoch_s, datetime.UTC)


def _fatal_hint(target: Target, code: str, message: str) -> str:
    if code == "ResourceNotFoundException" and target.api == "PutEvents":
        what = "check the event tracker's id (routes[].tracking_id) and the region (personalize.region)"
    elif code == "ResourceNotFoundException":
        what = "check that the dataset exists in this account and region (routes[].dataset_arn, personalize.region)"
    elif code == "NoCredentials":
        what = "no AWS credentials were found: use IRSA on Kubernetes or the standard AWS environment variables"
    else:
        what = f"check the credentials and that their IAM policy allows personalize:{target.api} on this dataset"
    return f"{target.api} on {target.dataset_arn} failed with {code}: {message} — {what}"
