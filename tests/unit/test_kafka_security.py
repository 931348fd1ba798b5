"""Kafka security settings: parsing, consistency checks, client arguments, and secrets never shown."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

from ingestor.config import Settings
from ingestor.errors import ConfigError
from ingestor.kafka_auth import MskIamTokenProvider, kafka_security_kwargs
from ingestor.logs import configure_logging

CONFIG = Path(__file__).parents[2] / "config"
SECRET = "s3cr3t-Pa55word"


def load(security: dict[str, object]) -> Settings:
    return Settings.load(CONFIG / "ingestor.yaml", kafka={"security": security})


def test_plaintext_adds_nothing() -> None:
    assert kafka_security_kwargs(Settings.load(CONFIG / "ingestor.yaml")) == {}


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_password_mechanisms(mechanism: str) -> None:
    s = load({"protocol": "SASL_PLAINTEXT", "sasl_mechanism": mechanism, "sasl_username": "u", "sasl_password": SECRET})
    kwargs = kafka_security_kwargs(s)
    assert kwargs == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": mechanism,
        "sasl_plain_username": "u",
        "sasl_plain_password": SECRET,
    }
    assert SECRET not in repr(s) and SECRET not in str(s.model_dump())


def test_password_from_a_mounted_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "password"
    secret_file.write_text(SECRET + "\n")
    s = load(
        {
            "protocol": "SASL_SSL",
            "sasl_mechanism": "PLAIN",
            "sasl_username": "u",
            "sasl_password_file": str(secret_file),
        }
    )
    kwargs = kafka_security_kwargs(s)
    assert kwargs["sasl_plain_password"] == SECRET
    assert kwargs["ssl_context"] is not None


def test_password_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INGESTOR_KAFKA__SECURITY__SASL_PASSWORD", SECRET)
    s = load({"protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "u"})
    assert kafka_security_kwargs(s)["sasl_plain_password"] == SECRET


def test_msk_iam_uses_an_oauthbearer_token_provider() -> None:
    s = load({"protocol": "SASL_SSL", "sasl_mechanism": "AWS_MSK_IAM", "msk_region": "eu-west-1"})
    kwargs = kafka_security_kwargs(s)
    assert kwargs["sasl_mechanism"] == "OAUTHBEARER"
    assert isinstance(kwargs["sasl_oauth_token_provider"], MskIamTokenProvider)


@pytest.mark.parametrize(
    ("security", "message"),
    [
        ({"protocol": "SASL_SSL"}, "needs sasl_mechanism"),
        ({"protocol": "SSL", "sasl_mechanism": "PLAIN"}, "protocol is not SASL"),
        ({"protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_username": "u"}, "needs sasl_password"),
        ({"protocol": "SSL", "ssl_cafile": "/nonexistent/ca.pem"}, "ssl_cafile: no such file"),
        ({"protocol": "SSL", "ssl_certfile": "/etc/hostname"}, "go together"),
    ],
)
def test_inconsistent_security_fails_at_start_naming_the_setting(security: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load(security)
    assert "kafka.security" in str(info.value)


def test_secrets_never_appear_in_config_errors_or_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError) as info:
        load({"protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_password": SECRET})  # no username
    assert SECRET not in str(info.value)
    s = load({"protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_username": "u", "sasl_password": SECRET})
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    configure_logging("INFO", "json")
    try:
        logging.getLogger("test").info("settings loaded: %s", s, extra={"kafka": s.kafka})
        logging.getLogger("test").info("dump %s", s.model_dump())
    finally:
        logging.getLogger().handlers.clear()
    out = stream.getvalue()
    assert "settings loaded" in out
    assert SECRET not in out
