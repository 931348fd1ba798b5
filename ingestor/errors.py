"""The one root exception type and its family.

Foreign exceptions (aiokafka, botocore, pydantic, json) are mapped at the boundary with ``raise ... from``.
"""

from __future__ import annotations


class IngestorError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(IngestorError):
    """The configuration is invalid; the message names the setting and how to fix it."""


class RecordError(IngestorError):
    """One record cannot be delivered (a poison pill): it goes to the dead-letter topic, never blocks."""

    stage = "validate"


class DecodeError(RecordError):
    """The record's bytes are not a change we understand (bad JSON, unknown shape, missing id)."""

    stage = "decode"


class SchemaError(RecordError):
    """The record does not match the dataset's schema or the API's limits."""

    stage = "validate"

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class FatalRouteError(IngestorError):
    """A route cannot deliver anything (unknown dataset, access denied, bad credentials): stop, never DLQ."""


class DeliveryError(IngestorError):
    """A Personalize call failed in a way that may succeed later (throttling, 5xx, timeouts, connection errors)."""


class QuotaBusError(IngestorError):
    """The quota heartbeat topic cannot be written or read now; the replica falls back to its partition share."""
