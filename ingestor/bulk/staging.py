"""Personalize's bulk CSV, streamed to S3 by multipart upload (or to a local file for ``--dry-run``).

The format Personalize imports: UTF-8, RFC 4180 (comma-separated, CRLF line ends, fields with commas, quotes or
line breaks in double quotes, quotes doubled), a header of the schema's field names (the id field first), one row
per id, an empty field for null, ``|`` between categorical values (the streaming path's categorical strings are
already ``|``-joined), booleans as ``true``/``false``.

Rows are rendered in a worker thread one part at a time (``part_size`` bytes, at least S3's 5 MB minimum), so the
event loop stays free and memory holds about one part, whatever the number of rows.
"""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ingestor.errors import IngestorError
from ingestor.schema import DatasetSchema

log = logging.getLogger(__name__)

MIN_PART_BYTES = 5 * 1024 * 1024
_S3_URI_RE = re.compile(r"s3://(?P<bucket>[^/]+)/?(?P<key>.*)")


class StagingError(IngestorError):
    """The CSV could not be written to S3 (or to the local file)."""


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix/`` → (``bucket``, ``some/prefix/``)."""
    match = _S3_URI_RE.fullmatch(uri)
    if match is None:
        raise StagingError(f"not an s3:// URI: {uri!r}")
    return match["bucket"], match["key"]


class CsvRenderer:
    """Renders store rows (id, properties JSON) as the dataset's CSV."""

    def __init__(self, schema: DatasetSchema) -> None:
        self.schema = schema
        self.columns = [schema.kind.id_field, *(f.name for f in schema.fields)]
        self._keys = [f.key for f in schema.fields]

    def header(self) -> list[str]:
        return self.columns

    def row(self, record_id: str, properties: str | None) -> list[Any]:
        """One CSV row: the id, then each field's value (None → empty, booleans → true/false, numbers as JSON)."""
        if not properties:
            return [record_id, *([""] * len(self._keys))]
        props: dict[str, Any] = orjson.loads(properties)
        get = props.get
        return [record_id, *[_BOOLS.get(v, v) if type(v) is bool else v for v in map(get, self._keys)]]


# csv writes None as an empty field and numbers with str() (repr for floats): only booleans need spelling out.
_BOOLS: dict[Any, str] = {True: "true", False: "false"}


@dataclass
class StagingProgress:
    rows: int = 0
    bytes: int = 0  # rendered
    uploaded: int = 0  # acknowledged by S3


def render_chunks(
    renderer: CsvRenderer, rows: Iterator[tuple[str, str | None]], part_size: int, progress: StagingProgress
) -> Iterator[bytes]:
    """The CSV in chunks of about ``part_size`` bytes (the last one smaller); the header comes first."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(renderer.header())
    row = renderer.row
    while batch := list(itertools.islice(rows, 1024)):
        writer.writerows([row(record_id, properties) for record_id, properties in batch])
        progress.rows += len(batch)
        if buf.tell() >= part_size:
            data = buf.getvalue().encode("utf-8")
            progress.bytes += len(data)
            yield data
            buf.seek(0)
            buf.truncate()
    data = buf.getvalue().encode("utf-8")
    progress.bytes += len(data)
    yield data


async def _next_chunk(chunks: Iterator[bytes]) -> bytes | None:
    return await asyncio.to_thread(next, chunks, None)


async def stage_to_s3(
    s3: Any,
    uri: str,
    renderer: CsvRenderer,
    rows: Iterator[tuple[str, str | None]],
    *,
    part_size: int = 16 * 1024 * 1024,
    progress: StagingProgress | None = None,
    on_part: Callable[[StagingProgress], None] = lambda p: None,
) -> StagingProgress:
    """Write the CSV to ``uri`` (s3://bucket/key) by multipart upload; aborted on any failure."""
    from botocore.exceptions import BotoCoreError, ClientError

    progress = progress or StagingProgress()
    bucket, key = split_s3_uri(uri)
    part_size = max(part_size, MIN_PART_BYTES)
    chunks = render_chunks(renderer, rows, part_size, progress)
    try:
        upload = await s3.create_multipart_upload(Bucket=bucket, Key=key, ContentType="text/csv")
    except (BotoCoreError, ClientError) as exc:
        raise StagingError(f"cannot start the upload to {uri}: {exc}") from exc
    upload_id = upload["UploadId"]
    parts: list[dict[str, Any]] = []
    try:
        while (chunk := await _next_chunk(chunks)) is not None:
            if not chunk and parts:
                break  # nothing after the last full part
            number = len(parts) + 1
            response = await s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=chunk)
            parts.append({"ETag": response["ETag"], "PartNumber": number})
            progress.uploaded += len(chunk)
            on_part(progress)
        await s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts})
    except BaseException as exc:
        try:
            await s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        except (BotoCoreError, ClientError) as abort_exc:
            log.warning("could not abort the multipart upload of %s: %s", uri, abort_exc)
        if isinstance(exc, (BotoCoreError, ClientError)):
            raise StagingError(f"uploading {uri} failed: {exc}") from exc
        raise
    return progress


async def stage_to_file(
    path: Path, renderer: CsvRenderer, rows: Iterator[tuple[str, str | None]], progress: StagingProgress | None = None
) -> StagingProgress:
    """Write the CSV to a local file (``--dry-run``)."""
    progress = progress or StagingProgress()

    def write() -> None:
        with path.open("wb") as out:
            for chunk in render_chunks(renderer, rows, MIN_PART_BYTES, progress):
                out.write(chunk)
                progress.uploaded += len(chunk)

    try:
        await asyncio.to_thread(write)
    except OSError as exc:
        raise StagingError(f"cannot write {path}: {exc.strerror}") from exc
    return progress
