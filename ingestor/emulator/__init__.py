"""A local Amazon Personalize Events endpoint that the unmodified AWS SDKs talk to (``endpoint_url=...``).

It checks PutItems / PutUsers / PutEvents calls the way Personalize does (request limits, dataset schemas),
enforces per-dataset-group quotas, injects faults on demand, and shows what it stored under ``/_emulator/``.

    async with running_emulator(EmulatorConfig.load("config/emulator.yaml")) as emu:
        ...  # boto3 / aioboto3 client("personalize-events", endpoint_url=emu.url)
        state = await emu.client.state()
"""

from ingestor.emulator.app import RunningEmulator, create_app, running_emulator
from ingestor.emulator.client import EmulatorClient, SyncEmulatorClient
from ingestor.emulator.config import Api, DatasetConfig, EmulatorConfig, FaultConfig, QuotaConfig
from ingestor.emulator.errors import ApiError, Outcome
from ingestor.emulator.service import EmulatorService

__all__ = [
    "Api",
    "ApiError",
    "DatasetConfig",
    "EmulatorClient",
    "EmulatorConfig",
    "EmulatorService",
    "FaultConfig",
    "Outcome",
    "QuotaConfig",
    "RunningEmulator",
    "SyncEmulatorClient",
    "create_app",
    "running_emulator",
]
