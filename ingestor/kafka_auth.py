"""Kafka connection security: TLS, SASL PLAIN / SCRAM, and AWS MSK IAM (SASL OAUTHBEARER).

Secrets come from SecretStr settings (environment) or mounted files and are handed to aiokafka only; nothing here
logs them, and the settings' repr masks them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.abc import AbstractTokenProvider
from aiokafka.helpers import create_ssl_context

from ingestor.config import Settings


class MskIamTokenProvider(AbstractTokenProvider):  # type: ignore[misc]
    """OAUTHBEARER tokens for MSK IAM, signed with the default AWS credential chain (IRSA on Kubernetes)."""

    def __init__(self, region: str) -> None:
        self._region = region

    async def token(self) -> str:
        from aws_msk_iam_sasl_signer import MSKAuthTokenProvider

        # Signing reads credentials (possibly over the network): keep it off the event loop.
        token, _expiry_ms = await asyncio.to_thread(MSKAuthTokenProvider.generate_auth_token, self._region)
        return str(token)


def kafka_security_kwargs(settings: Settings) -> dict[str, Any]:
    """Extra AIOKafkaConsumer / AIOKafkaProducer arguments for ``kafka.security`` (none for PLAINTEXT)."""
    sec = settings.kafka.security
    if sec.protocol == "PLAINTEXT":
        return {}
    kwargs: dict[str, Any] = {"security_protocol": sec.protocol}
    if sec.protocol in ("SSL", "SASL_SSL"):
        kwargs["ssl_context"] = create_ssl_context(
            cafile=str(sec.ssl_cafile) if sec.ssl_cafile else None,
            certfile=str(sec.ssl_certfile) if sec.ssl_certfile else None,
            keyfile=str(sec.ssl_keyfile) if sec.ssl_keyfile else None,
            password=sec.ssl_key_password.get_secret_value() if sec.ssl_key_password else None,
        )
    if sec.sasl_mechanism == "AWS_MSK_IAM":
        kwargs["sasl_mechanism"] = "OAUTHBEARER"
        kwargs["sasl_oauth_token_provider"] = MskIamTokenProvider(sec.msk_region or settings.personalize.region)
    elif sec.sasl_mechanism is not None:
        kwargs["sasl_mechanism"] = sec.sasl_mechanism
        kwargs["sasl_plain_username"] = sec.sasl_username
        kwargs["sasl_plain_password"] = sec.password()
    return kwargs
