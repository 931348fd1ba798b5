"""The container image's dependency lock, ``deploy/docker/requirements.lock``.

The Dockerfile installs exactly the lock (``pip install --no-deps -r requirements.lock``) and then runs
``pip check``, so an incomplete or inconsistent lock fails the image build instead of pulling in unpinned packages.
The lock is the runtime closure of the project's dependencies (no ``dev`` extra) for Linux, pinned to the versions
installed in this venv, i.e. the versions the test suite ran against. Regenerate it after changing dependencies:

    .venv/bin/python -m tests.deploy.lock > deploy/docker/requirements.lock
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

PROJECT = "personalize-ingestor"
LOCK_PATH = Path(__file__).resolve().parents[2] / "deploy" / "docker" / "requirements.lock"

HEADER = """\
# The image's dependency lock: the Linux runtime closure of personalize-ingestor, pinned to the versions the
# test suite ran against. The Dockerfile installs exactly these (pip install --no-deps) and runs pip check.
# Generated; after changing dependencies run:
#   .venv/bin/python -m tests.deploy.lock > deploy/docker/requirements.lock
"""


def image_environment(extra: str = "") -> dict[str, str]:
    """Marker environment of the image: this interpreter's version, but always Linux."""
    env = dict(default_environment())
    env.update(sys_platform="linux", platform_system="Linux", os_name="posix", extra=extra)
    return env


def applies(req: Requirement, extra: str = "") -> bool:
    return req.marker is None or req.marker.evaluate(image_environment(extra))


def requirements_of(name: str, extras: frozenset[str] = frozenset()) -> list[Requirement]:
    """The requirements an installed distribution declares for the image, with the given extras."""
    declared = [Requirement(r) for r in distribution(name).requires or []]
    return [r for r in declared if any(applies(r, e) for e in ("", *extras))]


def runtime_closure(project: str = PROJECT) -> dict[str, str]:
    """Canonical name → installed version for every runtime dependency of ``project``, transitively."""
    found: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(project, frozenset[str]())]
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        for req in requirements_of(name, extras):
            key = canonicalize_name(req.name)
            try:
                found[key] = distribution(req.name).version
            except PackageNotFoundError as exc:
                raise SystemExit(f"{req.name} (needed by {name}) is not installed; run ./scripts/setup") from exc
            todo.append((req.name, frozenset(req.extras)))
    found.pop(canonicalize_name(project), None)
    return found


def render(pins: dict[str, str]) -> str:
    return HEADER + "".join(f"{name}=={pins[name]}\n" for name in sorted(pins))


def read_lock(path: Path = LOCK_PATH) -> dict[str, Version]:
    """Canonical name → pinned version. Every non-comment line must be exactly ``name==version``."""
    pins: dict[str, Version] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator != "==" or req.marker or req.extras or req.url:
            raise ValueError(f"{path.name}:{number}: expected a plain name==version pin, got {line!r}")
        key = canonicalize_name(req.name)
        if key in pins:
            raise ValueError(f"{path.name}:{number}: {req.name} is pinned twice")
        pins[key] = Version(specs[0].version)
    return pins


if __name__ == "__main__":
    sys.stdout.write(render(runtime_closure()))
