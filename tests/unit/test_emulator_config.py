"""The emulator's config file, its validation, and the command line's overrides."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest

from ingestor.emulator.cli import config_from_args, configure_parser
from ingestor.emulator.config import EmulatorConfig, default_config_path
from ingestor.errors import ConfigError
from ingestor.schema import DatasetKind

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "emulator.yaml"
SCHEMAS = EXAMPLE.parent / "schemas"
SHOP = "arn:aws:personalize:us-east-1:123456789012:dataset/shop/"


def write_config(tmp_path: Path, text: str) -> Path:
    shutil.copytree(SCHEMAS, tmp_path / "schemas")
    path = tmp_path / "emulator.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_example_config_declares_the_three_shop_datasets() -> None:
    config = EmulatorConfig.load(EXAMPLE)
    assert [(d.arn, d.kind) for d in config.datasets] == [
        (SHOP + "ITEMS", DatasetKind.ITEMS),
        (SHOP + "USERS", DatasetKind.USERS),
        (SHOP + "INTERACTIONS", DatasetKind.INTERACTIONS),
    ]
    assert config.datasets[2].tracking_id
    assert all(d.schema_path.is_absolute() and d.group == "shop" for d in config.datasets)
    assert (config.quotas.put_items, config.quotas.put_users, config.quotas.put_events) == (10, 10, 1000)


def test_relative_schema_paths_resolve_against_the_config_folder(tmp_path: Path, monkeypatch) -> None:
    path = write_config(tmp_path, f"datasets:\n  - {{arn: '{SHOP}ITEMS', kind: ITEMS, schema: schemas/items.avsc}}\n")
    monkeypatch.chdir("/")
    assert EmulatorConfig.load(path).datasets[0].schema_path == tmp_path / "schemas" / "items.avsc"


@pytest.mark.parametrize(
    ("dataset", "expected"),
    [
        ("{arn: 'arn:aws:s3:::bucket', kind: ITEMS, schema: schemas/items.avsc}", "expected arn:aws:personalize"),
        (f"{{arn: '{SHOP}ITEMS', kind: ITEMS, schema: schemas/missing.avsc}}", "missing.avsc"),
        (f"{{arn: '{SHOP}INTERACTIONS', kind: INTERACTIONS, schema: schemas/interactions.avsc}}", "tracking_id"),
        (f"{{arn: '{SHOP}ITEMS', kind: ITEMS, schema: schemas/items.avsc, tracking_id: t}}", "tracking_id"),
        (f"{{arn: '{SHOP}ITEMS', kind: THINGS, schema: schemas/items.avsc}}", "datasets.0.kind"),
    ],
)
def test_invalid_datasets_are_rejected_naming_the_problem(tmp_path: Path, dataset: str, expected: str) -> None:
    path = write_config(tmp_path, f"datasets:\n  - {dataset}\n")
    with pytest.raises(ConfigError, match=expected):
        EmulatorConfig.load(path)


def test_duplicate_arns_are_rejected(tmp_path: Path) -> None:
    line = f"  - {{arn: '{SHOP}ITEMS', kind: ITEMS, schema: schemas/items.avsc}}\n"
    with pytest.raises(ConfigError, match="each arn may appear once"):
        EmulatorConfig.load(write_config(tmp_path, "datasets:\n" + line * 2))


def test_unknown_settings_are_rejected(tmp_path: Path) -> None:
    text = f"datasets:\n  - {{arn: '{SHOP}ITEMS', kind: ITEMS, schema: schemas/items.avsc}}\nfaults: {{fial_rate: 1}}\n"
    with pytest.raises(ConfigError, match=r"faults\.fial_rate"):
        EmulatorConfig.load(write_config(tmp_path, text))


def test_updated_merges_sections_and_validates() -> None:
    config = EmulatorConfig.load(EXAMPLE)
    changed = config.updated(faults={"fail_rate": 0.5}, quotas={"put_items": 3})
    assert changed.faults.fail_rate == 0.5 and changed.faults.fail_statuses == (500, 503)
    assert changed.quotas.put_items == 3 and changed.quotas.put_users == 10
    assert config.faults.fail_rate == 0.0  # frozen: the original is unchanged
    with pytest.raises(ConfigError, match=r"faults\.fail_rate"):
        config.updated(faults={"fail_rate": 2})


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ingestor emulator")
    configure_parser(parser)
    return parser.parse_args(["--config", str(EXAMPLE), *argv])


def test_command_line_flags_override_the_file() -> None:
    args = parse(
        "--seed", "9", "--fail-rate", "0.1", "--throttle-rate", "0.2", "--latency-ms", "5", "--jitter-ms", "3",
        "--put-items-rate", "4", "--put-events-rate", "0",
    )  # fmt: skip
    config = config_from_args(args)
    assert config.seed == 9
    assert (config.faults.fail_rate, config.faults.throttle_rate) == (0.1, 0.2)
    assert (config.faults.latency_ms, config.faults.jitter_ms) == (5, 3)
    assert (config.quotas.enabled, config.quotas.put_items, config.quotas.put_users) == (True, 4, 10)
    assert config.quotas.put_events is None
    assert (args.host, args.port) == ("127.0.0.1", 8099)


def test_no_quotas_flag() -> None:
    assert config_from_args(parse("--no-quotas")).quotas.enabled is False


def test_probabilities_are_checked(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("--fail-rate", "1.5")
    assert "between 0 and 1" in capsys.readouterr().err


def test_help_documents_every_option() -> None:
    parser = argparse.ArgumentParser(prog="ingestor emulator")
    configure_parser(parser)
    text = parser.format_help()
    for option in (
        "--config", "--host", "--port", "--seed", "--fail-rate", "--throttle-rate", "--latency-ms", "--jitter-ms",
        "--no-quotas", "--put-items-rate", "--put-users-rate", "--put-events-rate", "/_emulator/state",
    ):  # fmt: skip
        assert option in text


def test_the_example_config_is_the_default_from_the_source_tree() -> None:
    found = default_config_path()
    assert found is not None and found.resolve() == EXAMPLE
