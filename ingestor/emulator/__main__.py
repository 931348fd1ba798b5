"""``python -m ingestor.emulator``: the same as ``ingestor emulator``."""

from __future__ import annotations

import argparse
import sys

from ingestor.emulator.cli import configure_parser, main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m ingestor.emulator")
    configure_parser(parser)
    sys.exit(main(parser.parse_args()))
