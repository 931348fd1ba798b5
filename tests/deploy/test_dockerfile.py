"""The container image: hadolint, the entrypoint really starts the CLI, the healthcheck works, the lock is sound."""

from __future__ import annotations

import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path, PurePosixPath

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from ingestor.config import MetricsSettings, Settings
from tests.deploy import lock
from tests.deploy.support import DOCKERFILE, ROOT, Instruction, label_pairs, parse_dockerfile, split_flags

UID = 10001
IMAGE_CONFIG = "/etc/ingestor/config.yaml"
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse_dockerfile()


def runtime(instructions: list[Instruction], keyword: str) -> list[Instruction]:
    last = instructions[-1].stage
    return [i for i in instructions if i.stage == last and i.keyword == keyword]


def only(instructions: list[Instruction], keyword: str) -> Instruction:
    found = runtime(instructions, keyword)
    assert len(found) == 1, f"the runtime stage needs exactly one {keyword}, has {len(found)}"
    return found[0]


def executable(name: str) -> str:
    """A tool installed into this venv by the dev extra (pip install -e '.[dev]')."""
    found = shutil.which(name, path=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    assert found, f"{name} is not installed: run ./scripts/setup (it is in the dev extra)"
    return found


# ---------------------------------------------------------------- lint and structure


def test_hadolint_reports_nothing() -> None:
    # Reads .hadolint.yaml from the repository root if there is one; the default failure threshold is "info".
    result = subprocess.run(
        [executable("hadolint"), "--no-color", str(DOCKERFILE.relative_to(ROOT))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_stages_use_one_pinned_slim_python_311(instructions: list[Instruction]) -> None:
    images = [i.args.split()[0] for i in instructions if i.keyword == "FROM"]
    assert len(images) >= 2, "expected a builder stage and a runtime stage"
    for image in images:
        pinned = re.fullmatch(r"python:3\.11\.\d+-slim(-[a-z]+)?", image)
        assert pinned, f"{image}: pin python:3.11.<patch>-slim-<distro>"
    assert len(set(images)) == 1, f"builder and runtime must share the base image (the venv links to it): {images}"


def test_runtime_stage_installs_nothing_and_copies_the_venv(instructions: list[Instruction]) -> None:
    runs = " ".join(i.args for i in runtime(instructions, "RUN"))
    assert "pip" not in runs, "the runtime stage must not run pip; install in the builder and copy the venv"
    copies = [i.args for i in runtime(instructions, "COPY")]
    assert any(c.startswith("--from=builder /opt/venv") for c in copies), copies


def test_builder_installs_the_wheel_from_the_lock(instructions: list[Instruction]) -> None:
    runs = [i.args for i in instructions if i.keyword == "RUN" and i.stage < instructions[-1].stage]
    install = next((r for r in runs if " install " in r and "requirements.lock" in r), None)
    assert install, "the builder must pip install the lock"
    for flag in ("--no-cache-dir", "--no-deps", "/wheels/"):
        assert flag in install, f"the install must use {flag}: {install}"
    assert " check" in install, "pip check must verify the installed set is complete and consistent"
    assert any("pip wheel" in r for r in runs), "the builder must build the project's wheel"


def test_runs_as_numeric_non_root_user(instructions: list[Instruction]) -> None:
    user = only(instructions, "USER").args
    assert re.fullmatch(r"\d+(:\d+)?", user), f"USER {user}: use a numeric UID so runAsNonRoot can verify it"
    assert int(user.split(":")[0]) == UID


def test_environment_suits_a_read_only_root_filesystem(instructions: list[Instruction]) -> None:
    env = " ".join(i.args for i in runtime(instructions, "ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "PYTHONUNBUFFERED=1" in env
    assert "/opt/venv/bin" in env


def test_exposes_the_metrics_port(instructions: list[Instruction]) -> None:
    assert only(instructions, "EXPOSE").args == str(MetricsSettings().port)


def test_oci_labels(instructions: list[Instruction]) -> None:
    labels: dict[str, str] = {}
    for instruction in runtime(instructions, "LABEL"):
        labels.update(label_pairs(instruction.args))
    for key in ("title", "description", "version", "revision", "created", "licenses"):
        assert labels.get(f"org.opencontainers.image.{key}"), f"missing label org.opencontainers.image.{key}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert labels["org.opencontainers.image.licenses"] == project["license"]


def test_entrypoint_and_cmd_are_exec_form(instructions: list[Instruction]) -> None:
    assert only(instructions, "ENTRYPOINT").exec_form() == ["ingestor"]
    assert only(instructions, "CMD").exec_form() == ["run", "--config", IMAGE_CONFIG]


# ---------------------------------------------------------------- the command really works


def run_entrypoint(instructions: list[Instruction], *args: str) -> subprocess.CompletedProcess[str]:
    entrypoint = only(instructions, "ENTRYPOINT").exec_form()
    command = [executable(entrypoint[0]), *entrypoint[1:], *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGESTOR_")}
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    missing = re.search(r"(ModuleNotFoundError|ImportError): .*'(ingestor\.[\w.]+)'", result.stderr)
    if result.returncode != 0 and missing:
        # The CLI imports every sub-command's module to build its parser; one still being written breaks --help.
        pytest.skip(f"{missing.group(2)} is not importable yet ({missing.group(1)}); the CLI cannot start")
    return result


def test_entrypoint_help(instructions: list[Instruction]) -> None:
    result = run_entrypoint(instructions, "--help")
    assert result.returncode == 0, result.stderr
    assert "run" in result.stdout


def test_entrypoint_run_help(instructions: list[Instruction]) -> None:
    cmd = only(instructions, "CMD").exec_form()
    result = run_entrypoint(instructions, cmd[0], "--help")
    assert result.returncode == 0, result.stderr
    for option in cmd[1:]:
        if option.startswith("--"):
            assert option in result.stdout, f"`ingestor {cmd[0]} --help` does not list {option}"


def test_default_config_in_the_image_loads(
    instructions: list[Instruction], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lay out /etc/ingestor as the Dockerfile's COPY instructions do, and load it as `ingestor run` would."""
    for name in [k for k in os.environ if k.startswith("INGESTOR_")]:
        monkeypatch.delenv(name)
    for instruction in runtime(instructions, "COPY"):
        if instruction.args.startswith("--"):
            continue
        source, destination = instruction.args.split()
        if not destination.startswith("/etc/ingestor"):
            continue
        target = tmp_path / PurePosixPath(destination).relative_to("/")
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, target)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ROOT / source, target)
    settings = Settings.load(tmp_path / PurePosixPath(IMAGE_CONFIG).relative_to("/"))
    assert settings.metrics.port == MetricsSettings().port


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_healthcheck_probes_healthz(instructions: list[Instruction], health_server: http.server.HTTPServer) -> None:
    flags, rest = split_flags(only(instructions, "HEALTHCHECK").args)
    assert rest.startswith("CMD "), "HEALTHCHECK must run a command"
    command = Instruction("CMD", rest[4:], 0).exec_form()
    assert command[0] == "python", "the image has no curl; the check must use python"
    command[0] = sys.executable
    port = health_server.server_address[1]

    def probe() -> int:
        env = {**os.environ, "INGESTOR_METRICS__PORT": str(port)}
        return subprocess.run(command, env=env, capture_output=True, timeout=30).returncode

    _Health.status = 200
    assert probe() == 0
    _Health.status = 503
    assert probe() != 0
    health_server.shutdown()
    health_server.server_close()
    assert probe() != 0, "nothing listening must count as unhealthy"
    assert {"interval", "timeout", "retries"} <= set(flags)


# ---------------------------------------------------------------- build context


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern also excludes everything below a matched folder."""
    excluded = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        pattern = pattern.strip().lstrip("/").removeprefix("./").rstrip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        regex = regex.replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, p) for p in prefixes):
            excluded = not negate
    return excluded


def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def test_dockerignore_keeps_what_the_build_copies(instructions: list[Instruction]) -> None:
    patterns = dockerignore()
    for instruction in instructions:
        if instruction.keyword != "COPY" or instruction.args.startswith("--from"):
            continue
        *sources, _ = instruction.args.split()
        for source in sources:
            root = ROOT / source
            files = [p for p in root.rglob("*") if p.is_file()] if root.is_dir() else [root]
            assert files, f"COPY {source}: nothing there"
            for file in files:
                relative = file.relative_to(ROOT).as_posix()
                if "__pycache__" in relative:
                    continue
                assert not dockerignore_excludes(relative, patterns), f"{relative} is copied but .dockerignore drops it"


@pytest.mark.parametrize("path", [".git/HEAD", ".venv/bin/python", "tests/unit/x.py", "ingestor/__pycache__/a.pyc"])
def test_dockerignore_drops_local_state(path: str) -> None:
    assert dockerignore_excludes(path, dockerignore()), f"{path} should not be in the build context"


def test_dockerignore_matcher_semantics() -> None:
    assert dockerignore_excludes("a/b/c.pyc", ["**/*.pyc"])
    assert not dockerignore_excludes("README.md", ["*.md", "!README.md"])
    assert dockerignore_excludes("docs/x.md", ["docs"])


# ---------------------------------------------------------------- the dependency lock


def image_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return [r for r in map(Requirement, project["dependencies"]) if lock.applies(r)]


def test_lock_pins_every_runtime_dependency() -> None:
    pins = lock.read_lock()
    for req in image_requirements():
        key = canonicalize_name(req.name)
        assert key in pins, f"{req.name} is a dependency but not in the lock: python -m tests.deploy.lock (see lock.py)"
        assert req.specifier.contains(pins[key], prereleases=True), f"the lock's {key}=={pins[key]} violates {req}"


def test_lock_is_consistent_where_this_venv_has_the_same_versions() -> None:
    """pip check, offline: the requirements of each locked package (known where the venv has that very version)."""
    pins = lock.read_lock()
    checked = 0
    for key, version in pins.items():
        try:
            installed = distribution(key).version
        except PackageNotFoundError:
            continue
        if installed != str(version):
            continue
        checked += 1
        for req in lock.requirements_of(key):
            dep = canonicalize_name(req.name)
            assert dep in pins, f"{key}=={version} requires {req}, which the lock misses"
            assert req.specifier.contains(pins[dep], prereleases=True), f"{key} requires {req}; lock has {pins[dep]}"
    if checked < len(pins) // 2:
        pytest.skip(f"only {checked}/{len(pins)} locked versions are installed here; regenerate the lock to check it")
