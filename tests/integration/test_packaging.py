"""What a ``pip install`` user gets: the wheel, installed into a fresh venv away from the source tree, ships the
example configuration, so ``ingestor init``, ``ingestor emulator`` and ``ingestor demo`` work without a checkout.

The wheel is built with ``pip wheel --no-deps`` from a copy of what the Dockerfile copies (pyproject.toml, README.md,
ingestor/), and installed with ``--no-deps`` into a venv that sees the project's .venv site-packages through a .pth
file (the dependencies, without fetching them again). Every command runs in an empty folder.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from ingestor.emulator import EmulatorClient
from ingestor.examples import FILES

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
LISTENING = re.compile(rb"listening on (http://\S+) \((.*)\)")


@dataclass(frozen=True)
class Installed:
    wheel: Path
    bin: Path
    site_packages: Path
    env: dict[str, str]

    def run(self, *args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            cwd=cwd, env=self.env, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "ingestor", src / "ingestor", ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(base / "dist"), str(src)], check=True, timeout=240)
    (wheel,) = (base / "dist").glob("personalize_ingestor-*.whl")

    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    site_packages = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True, timeout=60,
        ).stdout.strip()
    )  # fmt: skip
    # The dependencies from the project's venv (a plain path entry: its editable install of ingestor stays out).
    (site_packages / "project-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([*pip, "--python", str(python), "install", "--no-deps", str(wheel)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INGESTOR_", "PYTHON", "VIRTUAL_ENV"))}
    return Installed(wheel, venv / "bin", site_packages, env)


def test_the_wheel_ships_the_examples(installed: Installed, tmp_path: Path) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    assert {f"ingestor/examples/{name}" for name in FILES} <= names
    where = installed.run("python", "-c", "import ingestor; print(ingestor.__file__)", cwd=tmp_path)
    assert where.stdout.startswith(str(installed.site_packages)), where  # the wheel, not the source tree


def test_init_then_check_config(installed: Installed, tmp_path: Path) -> None:
    result = installed.run("ingestor", "init", "settings", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Next steps:" in result.stdout
    for name in FILES:
        assert (tmp_path / "settings" / name).read_bytes() == (ROOT / "config" / name).read_bytes(), name

    again = installed.run("ingestor", "init", "settings", cwd=tmp_path)
    assert again.returncode == 1 and "nothing was written" in again.stderr and "--force" in again.stderr
    assert installed.run("ingestor", "init", "settings", "--force", cwd=tmp_path).returncode == 0

    check = installed.run("ingestor", "run", "--config", "settings/ingestor.yaml", "--check-config", cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    assert "configuration OK" in check.stdout and "catalog.items → PutItems" in check.stdout


async def test_the_emulator_starts_without_a_config(installed: Installed, tmp_path: Path) -> None:
    help_text = installed.run("ingestor", "emulator", "--help", cwd=tmp_path)
    assert help_text.returncode == 0, help_text.stderr
    assert "ingestor/examples/emulator.yaml" in re.sub(r"\s+", "", help_text.stdout)  # the default, wrapped

    proc = await asyncio.create_subprocess_exec(
        str(installed.bin / "ingestor"), "emulator", "--port", "0",
        cwd=tmp_path, env=installed.env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(60):
            while not (match := re.search(LISTENING, line := await proc.stderr.readline())):
                assert line, "the emulator exited before listening"
        assert b"ITEMS=arn:aws:personalize:us-east-1:123456789012:dataset/shop/ITEMS" in match[2]
        async with EmulatorClient(match[1].decode()) as client:
            assert (await client.stats())["total_calls"] == 0
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            _, rest = await proc.communicate()
        assert proc.returncode == 0, rest.decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.communicate()


def test_the_demo_runs_from_the_wheel(installed: Installed, tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()  # a user's own ./config must not be taken for the demo's
    (tmp_path / "config" / "ingestor.yaml").write_text("routes: []\n")
    result = installed.run(
        "ingestor", "demo", "--records", "200", "--rate", "0", "--no-quotas", "--metrics-port", "0",
        cwd=tmp_path, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "ALL CHECKS PASSED" in result.stdout
