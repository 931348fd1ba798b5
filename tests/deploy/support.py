"""Helpers for the deployment checks: repository paths, rendered kustomizations, the Dockerfile, markdown anchors."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.deploy import kustomize

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = ROOT / "Dockerfile"
DOCS = ROOT / "docs" / "operations.md"
DASHBOARD = DEPLOY / "dashboards" / "ingestor.json"
KUSTOMIZATIONS = {"base": DEPLOY / "base", "example": DEPLOY / "overlays" / "example"}
# Labels Prometheus adds to the service's series when it scrapes them through the ServiceMonitor.
TARGET_LABELS = {"namespace", "pod", "service", "job", "endpoint", "container", "instance"}


# ---------------------------------------------------------------- rendered manifests


@dataclass
class Rendered:
    name: str
    manifests: list[dict[str, Any]]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.manifests if m["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [m for m in self.all(kind) if name is None or m["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.name}: expected one {kind} {name or ''}, found {len(found)}"
        return found[0]

    @property
    def deployment(self) -> dict[str, Any]:
        return self.one("Deployment")

    @property
    def container(self) -> dict[str, Any]:
        containers = self.deployment["spec"]["template"]["spec"]["containers"]
        assert len(containers) == 1
        return containers[0]

    @property
    def config_map(self) -> dict[str, Any]:
        """The ConfigMap mounted as the service's config file."""
        volumes = {v["name"]: v for v in self.deployment["spec"]["template"]["spec"]["volumes"]}
        mount = next(m for m in self.container["volumeMounts"] if m["mountPath"] == config_path(self.container))
        return self.one("ConfigMap", volumes[mount["name"]]["configMap"]["name"])

    @property
    def config(self) -> dict[str, Any]:
        parsed: dict[str, Any] = yaml.safe_load(self.config_map["data"]["config.yaml"])
        return parsed


def config_path(container: dict[str, Any]) -> str:
    args = container.get("args", [])
    assert "--config" in args, f"container args {args} do not pass --config"
    return str(args[args.index("--config") + 1])


_RENDERED: dict[str, Rendered] = {}


def render(name: str) -> Rendered:
    if name not in _RENDERED:
        _RENDERED[name] = Rendered(name, kustomize.build(KUSTOMIZATIONS[name]))
    return _RENDERED[name]


@dataclass
class MetricCatalog:
    """Every sample name the service can export, with its label names (scrape target labels not included)."""

    labels: dict[str, frozenset[str]] = field(default_factory=dict)

    def __contains__(self, name: object) -> bool:
        return name in self.labels


# ---------------------------------------------------------------- the Dockerfile


@dataclass
class Instruction:
    keyword: str
    args: str
    stage: int

    def exec_form(self) -> list[str]:
        """The JSON array of an exec-form instruction (e.g. ENTRYPOINT ["x"]); fails on shell form."""
        value = json.loads(self.args)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"{self.keyword} is not exec form"
        return value


def parse_dockerfile(path: Path = DOCKERFILE) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped, each tagged with its stage number."""
    instructions: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = (pending + line).strip()
        pending = ""
        if not line:
            continue
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(keyword, args.strip(), stage))
    return instructions


def split_flags(args: str) -> tuple[dict[str, str], str]:
    """``--interval=30s --timeout=5s CMD [...]`` → ({interval: 30s, timeout: 5s}, 'CMD [...]')."""
    flags: dict[str, str] = {}
    rest = args
    while rest.startswith("--"):
        flag, _, rest = rest.partition(" ")
        key, _, value = flag[2:].partition("=")
        flags[key] = value
        rest = rest.lstrip()
    return flags, rest


def label_pairs(args: str) -> dict[str, str]:
    pairs = {}
    for token in shlex.split(args):
        key, _, value = token.partition("=")
        pairs[key] = value
    return pairs


GITHUB_ANCHOR_DROP = re.compile(r"[^\w\- ]")


def markdown_anchors(text: str) -> set[str]:
    """GitHub's anchors for the headings of a markdown document."""
    anchors = set()
    for line in text.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(GITHUB_ANCHOR_DROP.sub("", title).replace(" ", "-"))
    return anchors
