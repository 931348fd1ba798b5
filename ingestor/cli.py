"""The ``ingestor`` command. Thin: each sub-command's module declares its options and does the work."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# sub-command → (module, one-line help). Each module has configure_parser(parser) and main(args) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("ingestor.app", "consume the configured topics and keep Personalize in step (the service)"),
    "demo": ("ingestor.demo", "embedded broker + local Personalize endpoint + a sample stream, with live progress"),
    "emulator": ("ingestor.emulator.cli", "a local Personalize Events endpoint for development, tests and demos"),
    "import": (
        "ingestor.bulk.importer",
        "backfill through a dataset import job (bulk path): stage a CSV, import, commit",
    ),
    "dlq": ("ingestor.dlq_replay", "dead-letter topic tools: replay records after fixing their cause"),
    "init": ("ingestor.scaffold", "write an example configuration and schemas to edit (default folder: config)"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``command`` only that sub-command's module is imported (the others stay lazy)."""
    parser = argparse.ArgumentParser(
        prog="ingestor", description="Keeps Amazon Personalize datasets in step with a Kafka change stream."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if command in (None, name):
            module = importlib.import_module(module_name)
            module.configure_parser(p)
            p.set_defaults(_main=module.main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in COMMANDS else None
    args = build_parser(command).parse_args(argv)
    return int(args._main(args))


if __name__ == "__main__":
    sys.exit(main())
