"""The example configuration shipped in the package, so that a ``pip install`` works without a source checkout.

``ingestor demo`` runs on these files, ``ingestor emulator`` falls back to ``emulator.yaml`` when there is no
``--config`` and no ``./config/emulator.yaml``, and ``ingestor init`` copies them for a new user to edit. They are the
same files as the repository's ``config/`` folder (tests/unit/test_init.py keeps the two identical).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

EXAMPLES_DIR: Final = Path(__file__).resolve().parent
INGESTOR_YAML: Final = EXAMPLES_DIR / "ingestor.yaml"  # the service (routes to the example datasets)
EMULATOR_YAML: Final = EXAMPLES_DIR / "emulator.yaml"  # the local Personalize endpoint (the example datasets)

# Every example file, relative to EXAMPLES_DIR (and to the folder `ingestor init` writes).
FILES: Final = (
    "ingestor.yaml",
    "emulator.yaml",
    "schemas/items.avsc",
    "schemas/users.avsc",
    "schemas/interactions.avsc",
)
