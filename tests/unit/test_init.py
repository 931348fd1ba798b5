"""``ingestor init`` and the example configuration shipped in the package (ingestor/examples/ = config/)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ingestor.cli import main as cli_main
from ingestor.config import Settings
from ingestor.emulator.config import EmulatorConfig, default_config_path
from ingestor.examples import EMULATOR_YAML, EXAMPLES_DIR, FILES, INGESTOR_YAML
from ingestor.scaffold import InitError, write_examples

REPO_CONFIG = Path(__file__).parents[2] / "config"


def test_the_packaged_examples_are_the_repository_config_folder() -> None:
    """The repo's config/ and the package's copy (ingestor/examples/) are one example: edit both, keep them equal."""
    repo_files = sorted(str(p.relative_to(REPO_CONFIG)) for p in REPO_CONFIG.rglob("*") if p.is_file())
    assert repo_files == sorted(FILES), "config/ and ingestor.examples.FILES list different files"
    for name in FILES:
        assert (EXAMPLES_DIR / name).read_bytes() == (REPO_CONFIG / name).read_bytes(), (
            f"config/{name} and ingestor/examples/{name} differ: copy the one you edited over the other"
        )


def test_the_packaged_examples_load() -> None:
    settings = Settings.load(INGESTOR_YAML)
    assert settings.routes[0].schema_path == EXAMPLES_DIR / "schemas/items.avsc"
    emulator = EmulatorConfig.load(EMULATOR_YAML)
    assert {d.arn for d in emulator.datasets} >= {r.dataset_arn for r in settings.routes}


def test_the_defaults_shown_in_comments_are_the_defaults(tmp_path: Path) -> None:
    """ingestor.yaml shows optional settings commented out with their default values: uncommented, nothing changes."""
    text = INGESTOR_YAML.read_text(encoding="utf-8")
    shown = r"(auto_offset_reset|rebalance_timeout_ms|rate_limits|retry|format|max_buffered_records|logging|shutdown)"
    uncommented, count = re.subn(rf"^(\s*)# ({shown}:)", r"\1\2", text, flags=re.MULTILINE)
    assert count == 8, "a commented default was added or removed: update this test"
    (tmp_path / "ingestor.yaml").write_text(uncommented, encoding="utf-8")
    (tmp_path / "schemas").symlink_to(EXAMPLES_DIR / "schemas")
    plain, explicit = Settings.load(INGESTOR_YAML), Settings.load(tmp_path / "ingestor.yaml")
    shown_rates = explicit.personalize.rate_limits
    assert shown_rates.items() <= plain.personalize.rate_limits.items()
    same_rates = explicit.personalize.model_copy(update={"rate_limits": plain.personalize.rate_limits})
    routes = tuple(
        r.model_copy(update={"schema_path": p.schema_path}) for r, p in zip(explicit.routes, plain.routes, strict=True)
    )
    assert explicit.model_copy(update={"personalize": same_rates, "routes": routes}) == plain


def test_init_writes_every_example_and_prints_next_steps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "my config"
    assert cli_main(["init", str(target)]) == 0
    for name in FILES:
        assert (target / name).read_bytes() == (EXAMPLES_DIR / name).read_bytes(), name
    out = capsys.readouterr().out
    assert "Next steps:" in out
    assert f"ingestor run --config '{target}/ingestor.yaml' --check-config" in out  # quoted: the path has a space
    assert f"ingestor emulator --config '{target}/emulator.yaml'" in out
    assert Settings.load(target / "ingestor.yaml").routes[0].schema_path == target / "schemas/items.avsc"


def test_init_writes_to_config_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli_main(["init"]) == 0
    assert sorted(str(p.relative_to(tmp_path / "config")) for p in (tmp_path / "config").rglob("*.*")) == sorted(FILES)
    assert default_config_path() == Path("config/emulator.yaml")  # then `ingestor emulator` finds it


def test_init_never_overwrites_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "items.avsc").write_text("mine")
    assert cli_main(["init", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path}/schemas/items.avsc already exists; nothing was written" in err and "--force" in err
    assert (tmp_path / "schemas" / "items.avsc").read_text() == "mine"
    assert not (tmp_path / "ingestor.yaml").exists()  # all or nothing

    assert cli_main(["init", str(tmp_path), "--force"]) == 0
    assert (tmp_path / "schemas" / "items.avsc").read_bytes() == (EXAMPLES_DIR / "schemas/items.avsc").read_bytes()


def test_init_into_a_path_that_cannot_be_a_folder(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(InitError, match="cannot write"):
        write_examples(tmp_path / "file" / "config")


def test_the_emulator_falls_back_to_the_packaged_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./config here: not a source checkout
    assert default_config_path() == EMULATOR_YAML
