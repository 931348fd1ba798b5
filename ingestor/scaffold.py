"""``ingestor init [DIR]``: write the example configuration for a new user to edit, then say what to do next.

It copies the examples shipped in the package (:mod:`ingestor.examples`): ``ingestor.yaml`` (the service, commented),
``emulator.yaml`` (the local Personalize endpoint) and ``schemas/*.avsc`` (the example datasets' schemas). Nothing is
overwritten unless ``--force``: when any of the files exists, none is written.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
from pathlib import Path

from ingestor.errors import IngestorError
from ingestor.examples import EXAMPLES_DIR, FILES

DEFAULT_DIR = Path("config")  # where the README's commands and `ingestor emulator` look


class InitError(IngestorError):
    """The example configuration could not be written (files exist, or the folder is not writable)."""


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Write an example configuration to edit: DIR/ingestor.yaml (the service: Kafka, Personalize, one route per "
        "topic), DIR/emulator.yaml (a local Personalize endpoint to try it without AWS) and DIR/schemas/ (the "
        "datasets' schemas). Existing files are left alone unless --force."
    )
    parser.add_argument(
        "dir", nargs="?", type=Path, default=DEFAULT_DIR, metavar="DIR", help="folder to write to (default: ./config)"
    )
    parser.add_argument("--force", action="store_true", help="overwrite files that already exist")


def main(args: argparse.Namespace) -> int:
    try:
        written = write_examples(args.dir, force=args.force)
    except InitError as exc:
        print(f"ingestor init: {exc}", file=sys.stderr)
        return 1
    print(next_steps(args.dir, written))
    return 0


def write_examples(target: Path, *, force: bool = False) -> list[Path]:
    """Copy every example file under ``target``; the paths written. Refuses (writing nothing) if one exists."""
    pairs = [(EXAMPLES_DIR / name, target / name) for name in FILES]
    existing = [str(dest) for _, dest in pairs if dest.exists() or dest.is_symlink()]
    if existing and not force:
        raise InitError(
            f"{', '.join(existing)} already {'exists' if len(existing) == 1 else 'exist'}; nothing was written "
            "(pass --force to overwrite, or name another folder)"
        )
    try:
        for source, dest in pairs:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, dest)
    except OSError as exc:
        raise InitError(f"cannot write {exc.filename or target}: {exc.strerror}") from exc
    return [dest for _, dest in pairs]


def next_steps(target: Path, written: list[Path]) -> str:
    config, emulator = shlex.quote(str(target / "ingestor.yaml")), shlex.quote(str(target / "emulator.yaml"))
    schemas = target / "schemas"
    lines = [f"Wrote an example configuration to {target}/:", *(f"  {path}" for path in written), ""]
    lines += [
        "Next steps:",
        f"  1. Put your Personalize datasets' schemas (as created in Personalize) in {schemas}/.",
        f"  2. Edit {target / 'ingestor.yaml'}: kafka.bootstrap_servers, then one route per topic",
        "     (topic, kind items|users|interactions, dataset_arn, schema, format; tracking_id for interactions).",
        "     Its comments list the other settings.",
        f"  3. Check it (config and schemas, no connections):  ingestor run --config {config} --check-config",
        f"  4. Try it without AWS: `ingestor emulator --config {emulator}` (after declaring the same datasets in it),",
        "     then run the service against it with INGESTOR_PERSONALIZE__ENDPOINT_URL=http://127.0.0.1:8099",
        "     AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test.",
        f"  5. Run it:  ingestor run --config {config}   (AWS credentials from the standard chain)",
        "`ingestor demo` shows the whole system on this machine; `ingestor --help` lists every command.",
    ]
    return "\n".join(lines)
