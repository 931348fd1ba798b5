"""The datasets' own schemas on the control plane: DescribeDataset and DescribeSchema.

Each configured dataset has a schema ARN derived from its group and name
(``arn:aws:personalize:REGION:ACCOUNT:schema/GROUP-NAME``); DescribeSchema answers the schema file's JSON text, as
Personalize keeps the Avro text it was created with. Unknown ARNs → ResourceNotFoundException; malformed ones →
InvalidInputException (botocore's Arn shape: at most 256 characters).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from ingestor.emulator.errors import invalid_input, not_found

if TYPE_CHECKING:
    from ingestor.emulator.datasets import Dataset
    from ingestor.emulator.imports import Handler
    from ingestor.emulator.service import EmulatorService

ARN_MAX_CHARS = 256
_ARN_RE = re.compile(r"arn:([a-z\d-]+):personalize:.*:.*:.+")
_DATASET_ARN_RE = re.compile(
    r"^arn:(?P<part>[^:]+):personalize:(?P<region>[^:]*):(?P<account>[^:]*):dataset/(?P<rest>.+)$"
)


def schema_arn(dataset_arn: str) -> str:
    """The schema ARN the emulator gives a dataset: one schema per dataset, named after its group and name."""
    match = _DATASET_ARN_RE.match(dataset_arn)
    if match is None:  # the config checked the shape; keep a usable answer anyway
        return dataset_arn.replace(":dataset/", ":schema/")
    name = match["rest"].replace("/", "-")
    return f"arn:{match['part']}:personalize:{match['region']}:{match['account']}:schema/{name}"


def group_arn(dataset_arn: str) -> str:
    head, _, rest = dataset_arn.partition(":dataset/")
    return f"{head}:dataset-group/{rest.split('/', 1)[0]}"


def _arn(payload: dict[str, Any], member: str) -> str:
    value = payload.get(member)
    if not isinstance(value, str):
        raise invalid_input(f"1 validation error detected: {member} must be a string")
    if len(value) > ARN_MAX_CHARS or not _ARN_RE.fullmatch(value):
        raise invalid_input(f"1 validation error detected: {member} {value!r} must match {_ARN_RE.pattern}")
    return value


def _dataset_json(dataset: Dataset) -> dict[str, Any]:
    return {
        "name": dataset.arn.rsplit("/", 1)[-1],
        "datasetArn": dataset.arn,
        "datasetGroupArn": group_arn(dataset.arn),
        "datasetType": dataset.kind.value.capitalize(),
        "schemaArn": schema_arn(dataset.arn),
        "status": "ACTIVE",
        **({"trackingId": dataset.config.tracking_id} if dataset.config.tracking_id else {}),
    }


async def _describe_dataset(service: EmulatorService, payload: dict[str, Any]) -> dict[str, Any]:
    arn = _arn(payload, "datasetArn")
    dataset = service.datasets.get(arn)
    if dataset is None:
        raise not_found(f"Could not find the dataset {arn}")
    return {"dataset": _dataset_json(dataset)}


async def _describe_schema(service: EmulatorService, payload: dict[str, Any]) -> dict[str, Any]:
    arn = _arn(payload, "schemaArn")
    dataset = next((d for d in service.datasets.values() if schema_arn(d.arn) == arn), None)
    if dataset is None:
        raise not_found(f"Could not find the schema {arn}")
    return {
        "schema": {
            "name": arn.rsplit("/", 1)[-1],
            "schemaArn": arn,
            "schema": dataset.schema_text,
        }
    }


OPERATIONS: dict[str, Handler] = {
    "DescribeDataset": _describe_dataset,
    "DescribeSchema": _describe_schema,
}
