"""``ingestor emulator``: serve the local Personalize Events endpoint until SIGINT / SIGTERM.

Flags override the config file's quotas and faults, so one file serves calm demos and chaos runs alike.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from ingestor.emulator.config import EmulatorConfig, default_config_path
from ingestor.errors import ConfigError, IngestorError

log = logging.getLogger("ingestor.emulator")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "A local Amazon Personalize endpoint (PutItems, PutUsers, PutEvents, and dataset import jobs on the "
        "control plane at the same URL) for development, tests and demos. Point any AWS SDK at it with "
        "endpoint_url=http://HOST:PORT and any credentials. Inspect it at "
        "GET /_emulator/state and /_emulator/stats; POST /_emulator/reset clears it; POST /_emulator/config "
        "changes quotas, faults and import job settings while it runs. The same URL serves a Schema Registry subset "
        "for Avro streams (GET /schemas/ids/{id}, GET /subjects[/{s}/versions[/{v}]], POST /subjects/{s}/versions; "
        'use it as schema_registry.url); POST /_emulator/registry {"down": true} emulates a registry outage.'
    )
    default = default_config_path()
    parser.add_argument(
        "--config",
        type=Path,
        default=default,
        required=default is None,
        metavar="FILE",
        help=f"emulator YAML: datasets, quotas, faults (default: {default or 'none found, so required'})",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8099, help="port to listen on, 0 for any (default: %(default)s)")
    parser.add_argument("--seed", type=int, help="seed for the injected faults, for reproducible runs")

    faults = parser.add_argument_group("faults (override the config file)")
    faults.add_argument("--fail-rate", type=_probability, metavar="P", help="probability of a 500/503 answer")
    faults.add_argument(
        "--throttle-rate", type=_probability, metavar="P", help="probability of ThrottlingException, quota aside"
    )
    faults.add_argument("--latency-ms", type=_non_negative, metavar="MS", help="latency added to every call")
    faults.add_argument("--jitter-ms", type=_non_negative, metavar="MS", help="plus a uniform random 0..MS")

    quotas = parser.add_argument_group("quotas: calls per second per dataset group (override the config file)")
    quotas.add_argument("--no-quotas", action="store_true", help="never throttle for quota")
    for api, default_rate in (("items", 10), ("users", 10), ("events", 1000)):
        quotas.add_argument(
            f"--put-{api}-rate",
            type=_non_negative,
            metavar="N",
            help=f"Put{api.capitalize()} calls per second (Personalize's default: {default_rate}; 0: no quota)",
        )
    imports = parser.add_argument_group("dataset import jobs (the control plane)")
    imports.add_argument(
        "--s3",
        action="store_true",
        help="also start a local S3 server (moto's, on a free loopback port) and read staged CSVs from it",
    )
    imports.add_argument("--s3-port", type=int, default=0, help="the local S3 server's port with --s3 (default: any)")
    imports.add_argument(
        "--import-duration-s", type=_non_negative, metavar="S", help="how long an import job takes (default: config)"
    )
    parser.add_argument("--access-log", action="store_true", help="log every request")


def main(args: argparse.Namespace) -> int:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"ingestor emulator: {exc}", file=sys.stderr)
        return 2
    s3 = None
    try:
        if args.s3:
            from ingestor.emulator.s3server import LocalS3

            s3 = LocalS3(port=args.s3_port).start()
            config = config.updated(imports={"s3_endpoint_url": s3.url})
            log.info("local S3 server (moto) listening on %s", s3.url)
        asyncio.run(_serve(config, args.host, args.port, args.access_log))
    except OSError as exc:
        print(f"ingestor emulator: cannot listen on {args.host}:{args.port} ({exc.strerror})", file=sys.stderr)
        return 1
    except IngestorError as exc:
        print(f"ingestor emulator: {exc}", file=sys.stderr)
        return 1
    finally:
        if s3 is not None:
            s3.stop()
    return 0


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    """The config file with the command line's overrides applied."""
    faults = {
        key: value
        for key in ("fail_rate", "throttle_rate", "latency_ms", "jitter_ms")
        if (value := getattr(args, key)) is not None
    }
    quotas: dict[str, Any] = {"enabled": False} if args.no_quotas else {}
    for key in ("put_items", "put_users", "put_events"):
        rate = getattr(args, f"{key}_rate")
        if rate is not None:
            quotas[key] = rate or None  # 0: no quota for this API
    overrides: dict[str, Any] = {"faults": faults, "quotas": quotas}
    if getattr(args, "import_duration_s", None) is not None:
        overrides["imports"] = {"duration_s": args.import_duration_s}
    if args.seed is not None:
        overrides["seed"] = args.seed
    return EmulatorConfig.load(args.config, **overrides)


async def _serve(config: EmulatorConfig, host: str, port: int, access_log: bool) -> None:
    from ingestor.emulator.app import running_emulator  # aiohttp only when serving

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with running_emulator(config, host, port, access_log=access_log) as emulator:
            datasets = ", ".join(f"{d.kind.value}={d.arn}" for d in config.datasets)
            log.info("Personalize Events emulator listening on %s (%s)", emulator.url, datasets)
            log.info("Schema Registry (Confluent REST subset) at %s", emulator.url)
            if config.imports.s3_endpoint_url:
                log.info("import jobs read staged CSVs from %s", config.imports.s3_endpoint_url)
            await stop.wait()
            log.info("stopping")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a probability is between 0 and 1, got {text}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value
