"""Settings: YAML + environment, relative paths, and start-up errors that name the setting and the fix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ingestor.app import main as run_main
from ingestor.cli import build_parser
from ingestor.config import Settings
from ingestor.errors import ConfigError

CONFIG = Path(__file__).parents[2] / "config"
ITEMS = "arn:aws:personalize:us-east-1:1:dataset/shop/ITEMS"


@pytest.fixture
def config_copy(tmp_path: Path) -> Path:
    shutil.copytree(CONFIG, tmp_path / "config")
    return tmp_path / "config" / "ingestor.yaml"


def test_the_example_config_loads_with_schemas_resolved_against_its_folder(config_copy: Path) -> None:
    s = Settings.load(config_copy)
    assert s.routes[0].schema_path == config_copy.parent / "schemas/items.avsc"
    assert s.routes[0].dataset_group == "shop" and s.routes[0].api == "PutItems"
    assert s.batching.max_records == 10 and s.kafka.auto_offset_reset == "earliest"
    assert s.personalize.on_fatal == "hold" and s.personalize.fatal_retry_s == 60  # a fatal dataset is held


def test_environment_overrides_the_file(config_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INGESTOR_KAFKA__BOOTSTRAP_SERVERS", "broker:9093")
    monkeypatch.setenv("INGESTOR_BATCHING__LINGER_MS", "7")
    s = Settings.load(config_copy)
    assert s.kafka.bootstrap_servers == "broker:9093"
    assert s.batching.linger_ms == 7
    assert s.kafka.group_id == "personalize-ingestor"  # the file's other keys stay


def test_settings_are_frozen(config_copy: Path) -> None:
    s = Settings.load(config_copy)
    with pytest.raises(ValueError, match="frozen"):
        s.batching.linger_ms = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("edit", "fragments"),
    [
        (("max_records: 10", "max_records: 11"), ["batching.max_records", "INGESTOR_BATCHING__MAX_RECORDS"]),
        (("kind: items ", "kind: movies "), ["routes.0.kind", "'items', 'users' or 'interactions'"]),
        (("dataset/shop/ITEMS", "datasets/shop"), ["routes.0.dataset_arn", "dataset/DATASET_GROUP"]),
        (("schemas/items.avsc", "schemas/missing.avsc"), ["routes.0", "missing.avsc", "cannot be read"]),
        (("linger_ms: 50", "linger_ms: 50\n  surprise: 1"), ["batching.surprise", "Extra inputs"]),
        (("dead_letter_topic: personalize-ingestor-dlq", "dead_letter_topic: crm.users"), ["dead_letter_topic"]),
        (("max_in_flight: 16", "max_in_flight: 16\n  on_fatal: exit"), ["personalize.on_fatal", "'hold' or 'stop'"]),
        (("max_in_flight: 16", "max_in_flight: 16\n  fatal_retry_s: 0"), ["personalize.fatal_retry_s"]),
    ],
)
def test_bad_settings_fail_at_start_naming_the_key(
    config_copy: Path, edit: tuple[str, str], fragments: list[str]
) -> None:
    text = config_copy.read_text()
    assert edit[0] in text
    config_copy.write_text(text.replace(edit[0], edit[1], 1))
    with pytest.raises(ConfigError) as info:
        Settings.load(config_copy)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_unreadable_or_invalid_files_say_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        Settings.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("kafka: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        Settings.load(bad)


def test_check_config_prints_the_routes_and_bad_config_exits_2(
    config_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = build_parser("run").parse_args(["run", "--config", str(config_copy), "--check-config"])
    assert run_main(args) == 0
    out = capsys.readouterr().out
    assert "configuration OK" in out and "catalog.items → PutItems" in out
    config_copy.write_text(config_copy.read_text().replace("max_records: 10", "max_records: 0"))
    assert run_main(args) == 2
    assert "batching.max_records" in capsys.readouterr().err


def test_the_revocation_drain_must_fit_the_rebalance_timeout(
    config_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INGESTOR_SHUTDOWN__DRAIN_BUDGET_S", "25")  # + 10 s commit timeout > 30 s rebalance timeout
    with pytest.raises(ConfigError) as info:
        Settings.load(config_copy)
    message = str(info.value)
    assert "kafka.rebalance_timeout_ms" in message and "shutdown.drain_budget_s" in message
    monkeypatch.setenv("INGESTOR_KAFKA__REBALANCE_TIMEOUT_MS", "40000")
    assert Settings.load(config_copy).shutdown.drain_budget_s == 25


ITEMS_ROUTE = {
    "topic": "catalog.items",
    "kind": "items",
    "dataset_arn": "arn:aws:personalize:us-east-1:123456789012:dataset/shop/ITEMS",
    "schema": str(CONFIG / "schemas/items.avsc"),
}


def _load_error(**overrides: object) -> str:
    with pytest.raises(ConfigError) as info:
        Settings.load(None, **overrides)
    return str(info.value)


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        ({"kind": "movies"}, "routes.0.kind: Input should be 'items', 'users' or 'interactions'"),
        ({"schema": "/nowhere/items.avsc"}, "routes.0: schema file /nowhere/items.avsc: cannot be read"),
        ({"topic": ""}, "routes.0.topic: String should have at least 1 character"),
    ],
)
def test_an_invalid_only_route_reports_its_own_problem_only(bad: dict[str, str], fragment: str) -> None:
    message = _load_error(routes=[{**ITEMS_ROUTE, **bad}])
    assert fragment in message
    assert "at least 1 item" not in message  # not a second, confusing error about the (then empty) list
    assert len(message.splitlines()) == 2, message


def test_an_empty_route_list_is_still_reported() -> None:
    assert "routes: Tuple should have at least 1 item" in _load_error(routes=[])
    assert "routes: Field required" in _load_error()


def test_the_hint_for_a_route_setting_says_routes_are_overridden_as_json(config_copy: Path) -> None:
    config_copy.write_text(config_copy.read_text().replace("kind: users", "kind: people", 1))
    with pytest.raises(ConfigError) as info:
        Settings.load(config_copy)
    message = str(info.value)
    assert "routes.1.kind" in message
    assert "override the whole list as JSON in INGESTOR_ROUTES" in message
    assert "INGESTOR_ROUTES__" not in message  # no such variable
    assert "at least 1 item" not in message


def test_a_bad_route_from_the_environment_gets_the_same_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INGESTOR_ROUTES", json.dumps([{**ITEMS_ROUTE, "kind": "movies"}]))
    message = _load_error()
    assert "routes.0.kind: Input should be 'items', 'users' or 'interactions'" in message
    assert "override the whole list as JSON in INGESTOR_ROUTES" in message
    assert "at least 1 item" not in message


def test_the_hint_for_other_settings_names_their_variable() -> None:
    message = _load_error(routes=[ITEMS_ROUTE], kafka={"security": {"protocol": "SSH"}})
    assert "kafka.security.protocol:" in message
    assert "(set it in the YAML file or as INGESTOR_KAFKA__SECURITY__PROTOCOL)" in message


@pytest.mark.parametrize(("kind", "article"), [("items", "an ITEMS"), ("users", "a USERS")])
def test_a_schema_without_its_id_field(tmp_path: Path, kind: str, article: str) -> None:
    schema = tmp_path / "bad.avsc"
    schema.write_text(json.dumps({"type": "record", "name": "X", "fields": [{"name": "PRICE", "type": "float"}]}))
    arn = ITEMS_ROUTE["dataset_arn"].replace("ITEMS", kind.upper())
    message = _load_error(routes=[{**ITEMS_ROUTE, "kind": kind, "dataset_arn": arn, "schema": str(schema)}])
    id_field = "ITEM_ID" if kind == "items" else "USER_ID"
    assert f"{article} schema needs the field {id_field}" in message


def test_the_commented_interactions_route_of_the_example_loads(config_copy: Path) -> None:
    text = config_copy.read_text()
    start = text.index("  # - topic: shop.events")
    block = text[start:].split("batching:", 1)[0]
    config_copy.write_text(text.replace(block, block.replace("  # ", "  ", 1).replace("\n  #   ", "\n    ")))
    route = Settings.load(config_copy).routes[-1]
    assert (route.kind, route.api, route.tracking_id, route.session_id) == (
        "interactions",
        "PutEvents",
        "shop-tracking-id",
        "user_id",
    )
    assert set(route.event_builder().attributes) == {"ITEM_ID", "EVENT_TYPE", "EVENT_VALUE", "TIMESTAMP"}


@pytest.mark.parametrize(
    ("route", "fragment"),
    [
        ({"kind": "interactions"}, "set tracking_id to the event tracker's id"),
        ({"kind": "items", "tracking_id": "t"}, "tracking_id is for interactions routes only"),
    ],
)
def test_tracking_id_goes_with_interactions_routes(route: dict[str, str], fragment: str) -> None:
    schema = CONFIG / ("schemas/interactions.avsc" if route["kind"] == "interactions" else "schemas/items.avsc")
    arn = "arn:aws:personalize:us-east-1:1:dataset/shop/" + route["kind"].upper()
    with pytest.raises(ConfigError, match=fragment):
        Settings.load(None, routes=[{"topic": "t", "dataset_arn": arn, "schema": str(schema), **route}])


def test_an_api_left_out_of_rate_limits_keeps_personalizes_quota() -> None:
    s = Settings.load(
        None,
        personalize={"rate_limits": {"PutItems": 5}},
        routes=[{"topic": "t", "kind": "items", "dataset_arn": ITEMS, "schema": str(CONFIG / "schemas/items.avsc")}],
    )
    assert s.personalize.rate_limits == {"PutItems": 5, "PutUsers": 10, "PutEvents": 1000}


def test_check_config_describes_an_interactions_route() -> None:
    from ingestor.app import describe

    route = {
        "topic": "shop.events",
        "kind": "interactions",
        "dataset_arn": "arn:aws:personalize:us-east-1:1:dataset/shop/INTERACTIONS",
        "tracking_id": "tid",
        "schema": str(CONFIG / "schemas/interactions.avsc"),
        "timestamp_unit": "ms",
    }
    text = describe(Settings.load(None, routes=[route]))
    assert "shop.events → PutEvents" in text and "tracking_id tid" in text and "TIMESTAMP in ms" in text


def test_an_interactions_route_does_not_take_avro() -> None:
    route = {
        "topic": "shop.events",
        "kind": "interactions",
        "dataset_arn": "arn:aws:personalize:us-east-1:1:dataset/shop/INTERACTIONS",
        "tracking_id": "tid",
        "schema": str(CONFIG / "schemas/interactions.avsc"),
        "format": "avro",
    }
    with pytest.raises(ConfigError, match="interactions routes read JSON values"):
        Settings.load(None, routes=[route], schema_registry={"url": "http://127.0.0.1:1"})


def test_an_interactions_route_may_leave_out_its_schema_file() -> None:
    route = {
        "topic": "shop.events",
        "kind": "interactions",
        "dataset_arn": "arn:aws:personalize:us-east-1:1:dataset/shop/INTERACTIONS",
        "tracking_id": "tid",
    }
    (loaded,) = Settings.load(None, routes=[route]).routes
    assert loaded.schema_path is None  # the dataset's schema is fetched at start (DescribeDataset → DescribeSchema)
    with pytest.raises(ConfigError, match=r"routes\[shop.events\]\.schema is not set"):
        loaded.event_builder()
    avro = (CONFIG / "schemas/interactions.avsc").read_text()
    assert [f.name for f in loaded.event_builder(avro).schema.fields] == ["DEVICE"]
