"""The kustomizations under deploy/: render, validate against Kubernetes and CRD schemas, lint, check the policies."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from yamllint import linter
from yamllint.config import YamlLintConfig

from ingestor.config import Settings, ShutdownSettings
from tests.deploy import kustomize
from tests.deploy.support import (
    DASHBOARD,
    DEPLOY,
    DOCS,
    KUSTOMIZATIONS,
    ROOT,
    Rendered,
    config_path,
    parse_dockerfile,
)

K8S_VERSION = "1.30.0"
CRD_DIR = Path(__file__).parent / "crds"
CUSTOM_KINDS = {"ScaledObject", "ServiceMonitor", "PrometheusRule"}
EXPECTED_KINDS = {
    "ServiceAccount",
    "ConfigMap",
    "Deployment",
    "Service",
    "PodDisruptionBudget",
    "NetworkPolicy",
    "ScaledObject",
    "ServiceMonitor",
    "PrometheusRule",
}
# The service drains for shutdown.drain_budget_s, then commits, leaves the group and closes its clients.
SHUTDOWN_MARGIN_S = 15


# ---------------------------------------------------------------- rendering and schemas


def test_renders_every_component(rendered: Rendered) -> None:
    kinds = {m["kind"] for m in rendered.manifests}
    assert kinds >= EXPECTED_KINDS, f"{rendered.name}: missing {EXPECTED_KINDS - kinds}"
    assert len(rendered.all("Deployment")) == 1


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_matches_real_kustomize_when_available(name: str) -> None:
    """Cross-check the offline renderer against kubectl/kustomize where one is installed (not required)."""
    tool = shutil.which("kustomize") or shutil.which("kubectl")
    if tool is None:
        pytest.skip("neither kustomize nor kubectl is on PATH; the offline renderer stands alone")
    command = [tool, "build"] if tool.endswith("kustomize") else [tool, "kustomize"]
    result = subprocess.run([*command, str(KUSTOMIZATIONS[name])], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    real = [d for d in yaml.safe_load_all(result.stdout) if d]

    def key(m: dict[str, Any]) -> tuple[str, str, str]:
        return m["kind"], m["metadata"].get("namespace", ""), m["metadata"]["name"]

    ours = {key(m): m for m in kustomize.build(KUSTOMIZATIONS[name])}
    theirs = {key(m): m for m in real}
    assert ours.keys() == theirs.keys()
    for k, manifest in ours.items():
        assert manifest == theirs[k], f"{k} differs from {tool}'s rendering"


def test_core_manifests_match_kubernetes_schemas(rendered: Rendered) -> None:
    for manifest in rendered.manifests:
        if manifest["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{rendered.name}: {manifest['kind']}/{manifest['metadata']['name']}: {path}: {exc.message}")


@cache
def crd_validators() -> dict[tuple[str, str], jsonschema.Draft4Validator]:
    """(apiVersion, kind) → a validator for the CRD's OpenAPI schema, with unknown fields made errors."""
    validators = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text(encoding="utf-8"))
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = strict_schema(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
            validators[(f"{group}/{version['name']}", kind)] = jsonschema.Draft4Validator(schema)
    return validators


def strict_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Like the API server's strict field validation: fields a schema does not declare are errors."""
    if isinstance(schema, dict):
        if (
            schema.get("type") == "object"
            and "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        for value in schema.values():
            if isinstance(value, dict):
                strict_schema(value)
            elif isinstance(value, list):
                for item in value:
                    if isinstance(item, dict):
                        strict_schema(item)
    return schema


def test_custom_resources_match_their_crds(rendered: Rendered) -> None:
    validators = crd_validators()
    for manifest in rendered.manifests:
        if manifest["kind"] not in CUSTOM_KINDS:
            continue
        validator = validators.get((manifest["apiVersion"], manifest["kind"]))
        assert validator, f"no vendored CRD for {manifest['apiVersion']} {manifest['kind']} (tests/deploy/crds)"
        errors = sorted(validator.iter_errors(manifest), key=lambda e: list(e.path))
        assert not errors, "\n".join(f"{manifest['kind']}: {'.'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_strict_crd_validation_rejects_unknown_fields() -> None:
    bad = copy.deepcopy(yaml.safe_load((DEPLOY / "base" / "scaledobject.yaml").read_text(encoding="utf-8")))
    bad["spec"]["maxReplicas"] = 3
    validator = crd_validators()[("keda.sh/v1alpha1", "ScaledObject")]
    assert any("maxReplicas" in e.message for e in validator.iter_errors(bad))


# ---------------------------------------------------------------- yamllint


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


def test_yamllint() -> None:
    config = YamlLintConfig(file=str(ROOT / ".yamllint"))
    problems = []
    for path in yaml_files():
        for problem in linter.run(path.read_text(encoding="utf-8"), config, str(path)):
            where = f"{path.relative_to(ROOT)}:{problem.line}:{problem.column}"
            problems.append(f"{where}: {problem.desc} ({problem.rule})")
    assert yaml_files(), "no YAML under deploy/"
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------- the Deployment


def test_termination_grace_exceeds_the_drain_budget(rendered: Rendered) -> None:
    grace = rendered.deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    budgets = {ShutdownSettings().drain_budget_s, load_config(rendered).shutdown.drain_budget_s}
    for budget in budgets:
        assert grace > budget, f"terminationGracePeriodSeconds {grace} must exceed shutdown.drain_budget_s {budget}"
        assert grace - budget >= SHUTDOWN_MARGIN_S, f"leave {SHUTDOWN_MARGIN_S}s after the drain to commit and close"


def test_probes_use_the_health_endpoints_on_the_metrics_port(rendered: Rendered) -> None:
    container = rendered.container
    port = load_config(rendered).metrics.port
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": port}
    expected = {"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/healthz"}
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path, f"{probe} must GET {path}"
        assert get["port"] in ("metrics", port), f"{probe} must use the metrics port"
        assert get.get("scheme", "HTTP") == "HTTP"


def test_security_context(rendered: Rendered) -> None:
    pod = rendered.deployment["spec"]["template"]["spec"]
    uid = int(next(i for i in reversed(parse_dockerfile()) if i.keyword == "USER").args.split(":")[0])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"].get("runAsUser", uid) == uid
    sc = rendered.container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsNonRoot"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc.get("privileged", False) is False
    assert pod.get("hostNetwork", False) is False
    assert pod["automountServiceAccountToken"] is False
    # The Service named "ingestor" would otherwise inject INGESTOR_SERVICE_HOST etc. into the settings' namespace.
    assert pod["enableServiceLinks"] is False


def test_writable_tmp_and_read_only_config(rendered: Rendered) -> None:
    pod = rendered.deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in rendered.container["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    config = mounts[config_path(rendered.container)]
    assert config.get("readOnly") is True and config.get("subPath") == "config.yaml"


def test_container_runs_the_image_command(rendered: Rendered) -> None:
    instructions = parse_dockerfile()
    cmd = next(i for i in reversed(instructions) if i.keyword == "CMD").exec_form()
    container = rendered.container
    assert "command" not in container, "keep the image's ENTRYPOINT so SIGTERM reaches the service"
    assert container["args"] == cmd
    assert container["resources"]["requests"].keys() >= {"cpu", "memory"}
    assert container["resources"]["limits"].keys() >= {"memory"}
    assert ":" in container["image"] and not container["image"].endswith(":latest")


def test_replicas_are_left_to_keda(rendered: Rendered) -> None:
    assert "replicas" not in rendered.deployment["spec"], "the ScaledObject's HPA owns replicas; kubectl apply resets"


# ---------------------------------------------------------------- config, IRSA


def load_config(rendered: Rendered, env: dict[str, str] | None = None) -> Settings:
    """Load the rendered config.yaml the way the pod does: beside the image's schemas, with the pod's env."""
    with tempfile.TemporaryDirectory() as tmp:
        etc = Path(tmp) / "etc" / "ingestor"
        shutil.copytree(ROOT / "config" / "schemas", etc / "schemas")
        path = etc / Path(config_path(rendered.container)).name
        path.write_text(rendered.config_map["data"]["config.yaml"], encoding="utf-8")
        saved = {k: v for k, v in os.environ.items() if k.startswith("INGESTOR_")}
        for k in saved:
            del os.environ[k]
        os.environ.update(env or {})
        try:
            return Settings.load(path)
        finally:
            for k in env or {}:
                os.environ.pop(k, None)
            os.environ.update(saved)


def pod_env(rendered: Rendered) -> dict[str, str]:
    env = {}
    for var in rendered.container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "fieldRef" in var.get("valueFrom", {}):
            env[var["name"]] = "ingestor-5d8f7c9b4-x2x7q"  # a pod name
        else:
            pytest.fail(f"env {var['name']}: only literal values and fieldRefs are modelled here")
    return env


def test_config_loads_with_the_pod_environment(rendered: Rendered) -> None:
    settings = load_config(rendered, pod_env(rendered))
    assert settings.personalize.aws_access_key_id is None and settings.personalize.aws_secret_access_key is None
    assert settings.personalize.endpoint_url is None, "the cluster talks to the real Personalize endpoint"
    assert settings.logging.format == "json"


def test_no_static_aws_credentials(rendered: Rendered) -> None:
    text = yaml.safe_dump_all(rendered.manifests)
    for forbidden in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "aws_access_key_id", "aws_secret_access_key"):
        assert forbidden not in text


def test_service_account_is_annotated_for_irsa(rendered: Rendered) -> None:
    account = rendered.one("ServiceAccount")
    role = account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert re.fullmatch(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+", role), role
    assert rendered.deployment["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]


# ---------------------------------------------------------------- scaling


def kafka_triggers(rendered: Rendered) -> list[dict[str, Any]]:
    triggers = rendered.one("ScaledObject")["spec"]["triggers"]
    assert triggers and all(t["type"] == "kafka" for t in triggers)
    return triggers


def test_scaled_object_follows_the_config(rendered: Rendered) -> None:
    settings = load_config(rendered)
    scaled = rendered.one("ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == rendered.deployment["metadata"]["name"]
    topics = set()
    for trigger in kafka_triggers(rendered):
        meta = trigger["metadata"]
        assert all(isinstance(v, str) for v in meta.values()), "KEDA trigger metadata values must be strings"
        assert meta["bootstrapServers"] == settings.kafka.bootstrap_servers
        assert meta["consumerGroup"] == settings.kafka.group_id
        assert int(meta["lagThreshold"]) > 0
        assert meta.get("offsetResetPolicy", "latest") == settings.kafka.auto_offset_reset
        assert meta.get("allowIdleConsumers", "false") == "false", "idle consumers past the partition count"
        topics.add(meta["topic"])
    assert topics == {r.topic for r in settings.routes}, "one trigger per route topic"


def test_replica_bounds_are_documented(rendered: Rendered) -> None:
    spec = rendered.one("ScaledObject")["spec"]
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]  # the CRD's CEL rule
    source = (DEPLOY / "base" / "scaledobject.yaml").read_text(encoding="utf-8")
    assert re.search(r"maxReplicaCount\s*=\s*the partition count", source), "say why maxReplicaCount is what it is"
    if rendered.name != "base":
        overlay = (KUSTOMIZATIONS[rendered.name] / "scaledobject.yaml").read_text(encoding="utf-8")
        assert re.search(rf"{spec['maxReplicaCount']} partitions", overlay), "state the partition count it assumes"
    assert "maxReplicaCount" in DOCS.read_text(encoding="utf-8")


# ---------------------------------------------------------------- service, monitoring, policies


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_service_and_service_monitor_reach_the_pods(rendered: Rendered) -> None:
    pod_labels = rendered.deployment["spec"]["template"]["metadata"]["labels"]
    service = rendered.one("Service")
    assert matches(service["spec"]["selector"], pod_labels)
    assert service["spec"]["publishNotReadyAddresses"] is True, "unready pods must still be scraped"
    (port,) = service["spec"]["ports"]
    assert port["name"] == "metrics" and port["targetPort"] in ("metrics", load_config(rendered).metrics.port)
    monitor = rendered.one("ServiceMonitor")
    assert matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint.get("path", "/metrics") == "/metrics"


def test_pod_disruption_budget(rendered: Rendered) -> None:
    pdb = rendered.one("PodDisruptionBudget")
    pod_labels = rendered.deployment["spec"]["template"]["metadata"]["labels"]
    assert matches(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    assert pdb["spec"].get("maxUnavailable") == 1


def port_allowed(rules: list[dict[str, Any]], port: int, protocol: str = "TCP") -> bool:
    for rule in rules:
        for p in rule.get("ports", []):
            if p.get("protocol", "TCP") == protocol and p["port"] <= port <= p.get("endPort", p["port"]):
                return True
    return False


def test_network_policy(rendered: Rendered) -> None:
    policy = rendered.one("NetworkPolicy")["spec"]
    assert matches(policy["podSelector"]["matchLabels"], rendered.deployment["spec"]["template"]["metadata"]["labels"])
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    settings = load_config(rendered)
    assert port_allowed(policy["ingress"], settings.metrics.port)
    assert all(rule.get("from") for rule in policy["ingress"]), "ingress only from named sources (monitoring)"
    for broker in settings.kafka.bootstrap_servers.split(","):
        assert port_allowed(policy["egress"], int(broker.rsplit(":", 1)[1])), f"egress to Kafka {broker}"
    assert port_allowed(policy["egress"], 443)
    assert port_allowed(policy["egress"], 53, "UDP") and port_allowed(policy["egress"], 53, "TCP")
    assert not port_allowed(policy["egress"], 80), "no plain HTTP (e.g. the instance metadata service)"


def test_dashboard_ships_as_a_grafana_config_map(rendered: Rendered) -> None:
    (dashboard,) = [c for c in rendered.all("ConfigMap") if "ingestor.json" in c.get("data", {})]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["data"]["ingestor.json"] == DASHBOARD.read_text(encoding="utf-8")


def test_overlay_namespace_is_restricted() -> None:
    rendered = Rendered("example", kustomize.build(KUSTOMIZATIONS["example"]))
    namespace = rendered.one("Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for manifest in rendered.manifests:
        if manifest["kind"] != "Namespace":
            assert manifest["metadata"]["namespace"] == namespace["metadata"]["name"], manifest["metadata"]["name"]
