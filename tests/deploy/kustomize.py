"""A small, offline kustomize renderer: just enough of ``kustomize build`` for the files under deploy/.

Supported: ``resources`` (files and kustomization directories), ``namespace``, ``images``,
``configMapGenerator`` (``files``, ``literals``, ``behavior`` create/merge/replace, ``options``),
``generatorOptions``, and ``patches`` (strategic-merge or JSON 6902, from ``path`` or inline ``patch``, with an
optional ``target``). Any other kustomization field is an error, so a change to deploy/ that needs more fails here
instead of being silently ignored. Generated ConfigMap names get kustomize's content hash suffix and references to
them in pod templates are updated. Where a real ``kubectl``/``kustomize`` is on PATH, test_manifests.py compares.

Simplifications (fine for our files, checked by the comparison when it runs): strategic merge knows the merge keys
of the pod-spec lists only and replaces every other list; labelSelector/annotationSelector targets are unsupported.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_FIELDS = {
    "apiVersion",
    "kind",
    "resources",
    "namespace",
    "images",
    "configMapGenerator",
    "generatorOptions",
    "patches",
}
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PriorityClass",
    "StorageClass",
    "PersistentVolume",
}
# Strategic-merge keys of the lists that patches may merge into (the rest are replaced, as for custom resources).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "envFrom": None,
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
    "imagePullSecrets": "name",
}


class KustomizeError(ValueError):
    pass


@dataclass
class Item:
    obj: dict[str, Any]
    generated: str | None = None  # the generator's name, before the hash suffix
    hash_suffix: bool = False


def build(directory: Path | str) -> list[dict[str, Any]]:
    """Render a kustomization directory into a list of manifests (dicts)."""
    items = _build(Path(directory).resolve())
    _apply_name_hashes(items)
    return [i.obj for i in items]


def _load_kustomization(directory: Path) -> dict[str, Any]:
    for name in KUSTOMIZATION_FILES:
        path = directory / name
        if path.is_file():
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            unknown = set(data) - SUPPORTED_FIELDS
            if unknown:
                raise KustomizeError(f"{path}: fields {sorted(unknown)} are not supported by tests/deploy/kustomize.py")
            if data.get("kind", "Kustomization") != "Kustomization":
                raise KustomizeError(f"{path}: kind must be Kustomization")
            return data
    raise KustomizeError(f"{directory}: no kustomization.yaml")


def _read_local(directory: Path, relative: str) -> Path:
    """A file of this kustomization; like kustomize's default load restrictor, it must not leave the directory."""
    path = (directory / relative).resolve()
    if directory != path and directory not in path.parents:
        raise KustomizeError(f"{directory}: {relative} is outside the kustomization root")
    if not path.is_file():
        raise KustomizeError(f"{directory}: {relative} does not exist")
    return path


def load_documents(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    for d in docs:
        if not isinstance(d, dict) or "kind" not in d or "apiVersion" not in d:
            raise KustomizeError(f"{path}: every document must be a manifest with apiVersion and kind")
    return docs


def _build(directory: Path) -> list[Item]:
    k = _load_kustomization(directory)
    items: list[Item] = []
    for entry in k.get("resources", []):
        target = (directory / entry).resolve()
        if target.is_dir():
            items.extend(_build(target))
        else:
            items.extend(Item(d) for d in load_documents(_read_local(directory, entry)))

    options = k.get("generatorOptions", {})
    for gen in k.get("configMapGenerator", []):
        _generate_config_map(directory, gen, options, items)

    for patch in k.get("patches", []):
        _apply_patch(directory, patch, items)

    if "namespace" in k:
        for item in items:
            if item.obj["kind"] not in CLUSTER_SCOPED:
                item.obj.setdefault("metadata", {})["namespace"] = k["namespace"]

    for image in k.get("images", []):
        _set_image(items, image)

    _check_unique(items, directory)
    return items


def _key(item: Item) -> tuple[str, str, str]:
    meta = item.obj.get("metadata", {})
    return item.obj["kind"], meta.get("namespace", ""), item.generated or meta["name"]


def _check_unique(items: list[Item], directory: Path) -> None:
    seen: set[tuple[str, str, str]] = set()
    for item in items:
        if _key(item) in seen:
            raise KustomizeError(f"{directory}: {_key(item)} is defined twice")
        seen.add(_key(item))


# ---------------------------------------------------------------- configMapGenerator


def _generate_config_map(directory: Path, gen: dict[str, Any], global_opts: dict[str, Any], items: list[Item]) -> None:
    unknown = set(gen) - {"name", "namespace", "behavior", "files", "literals", "options"}
    if unknown:
        raise KustomizeError(f"{directory}: configMapGenerator fields {sorted(unknown)} are not supported")
    data: dict[str, str] = {}
    for spec in gen.get("files", []):
        key, _, rel = spec.rpartition("=") if "=" in spec else ("", "", spec)
        path = _read_local(directory, rel)
        data[key or path.name] = path.read_text(encoding="utf-8")
    for literal in gen.get("literals", []):
        key, sep, value = literal.partition("=")
        if not sep:
            raise KustomizeError(f"{directory}: literal {literal!r} is not key=value")
        data[key] = value
    opts = {**global_opts, **gen.get("options", {})}
    meta: dict[str, Any] = {"name": gen["name"]}
    if opts.get("labels"):
        meta["labels"] = dict(opts["labels"])
    if opts.get("annotations"):
        meta["annotations"] = dict(opts["annotations"])
    if "namespace" in gen:
        meta["namespace"] = gen["namespace"]
    new = Item(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data},
        generated=gen["name"],
        hash_suffix=not opts.get("disableNameSuffixHash", False),
    )
    behavior = gen.get("behavior", "create")
    existing = [i for i in items if i.obj["kind"] == "ConfigMap" and i.generated == gen["name"]]
    if behavior == "create":
        if existing:
            raise KustomizeError(f"{directory}: ConfigMap {gen['name']} exists; use behavior merge or replace")
        items.append(new)
        return
    if behavior not in ("merge", "replace") or len(existing) != 1:
        raise KustomizeError(f"{directory}: behavior {behavior!r} needs exactly one generated {gen['name']}")
    old = existing[0]
    if behavior == "merge":
        old.obj["data"] = {**old.obj.get("data", {}), **data}
        for field in ("labels", "annotations"):
            if field in meta:
                old.obj["metadata"][field] = {**old.obj["metadata"].get(field, {}), **meta[field]}
    else:
        old.obj["data"] = data
        for field in ("labels", "annotations"):
            if field in meta:
                old.obj["metadata"][field] = meta[field]
    if "disableNameSuffixHash" in opts:
        old.hash_suffix = not opts["disableNameSuffixHash"]


def config_map_hash(obj: dict[str, Any]) -> str:
    """kustomize's suffix: sha256 of the JSON {data, kind, name}, first 10 hex digits, some letters swapped.

    kustomize (api/hasher) looks the name up as the single field "metadata/name", which never exists, so the name
    it hashes is always "": only the data counts.
    """
    encoded = {"kind": "ConfigMap", "name": "", "data": obj.get("data", {})}
    text = json.dumps(encoded, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # Go's encoding/json escapes these for HTML safety; kustomize hashes Go's output.
    for char in "&<>\u2028\u2029":
        text = text.replace(char, f"\\u{ord(char):04x}")
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:10]
    return digest.translate(str.maketrans({"0": "g", "1": "h", "3": "k", "a": "m", "e": "t"}))


def _apply_name_hashes(items: list[Item]) -> None:
    renamed: dict[tuple[str, str], str] = {}
    for item in items:
        if item.obj["kind"] == "ConfigMap" and item.generated and item.hash_suffix:
            name = f"{item.generated}-{config_map_hash(item.obj)}"
            item.obj["metadata"]["name"] = name
            renamed[(item.obj["metadata"].get("namespace", ""), item.generated)] = name
    for item in items:
        spec = pod_spec(item.obj)
        if spec is None:
            continue
        namespace = item.obj["metadata"].get("namespace", "")

        def rename(ref: dict[str, Any], field: str = "name", ns: str = namespace) -> None:
            if ref.get(field) and (ns, ref[field]) in renamed:
                ref[field] = renamed[(ns, ref[field])]

        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                rename(volume["configMap"])
            for source in volume.get("projected", {}).get("sources", []):
                if "configMap" in source:
                    rename(source["configMap"])
        for container in spec.get("containers", []) + spec.get("initContainers", []):
            for env_from in container.get("envFrom", []):
                if "configMapRef" in env_from:
                    rename(env_from["configMapRef"])
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("configMapKeyRef")
                if ref:
                    rename(ref)


def pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    if obj["kind"] == "Pod":
        return obj.get("spec")
    if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return obj.get("spec", {}).get("template", {}).get("spec")
    if obj["kind"] == "CronJob":
        return obj.get("spec", {}).get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec")
    return None


# ---------------------------------------------------------------- images


def _set_image(items: list[Item], image: dict[str, Any]) -> None:
    for item in items:
        spec = pod_spec(item.obj)
        if spec is None:
            continue
        for container in spec.get("containers", []) + spec.get("initContainers", []):
            ref = container.get("image", "")
            name = ref.split("@", 1)[0]
            tag_at = name.rfind(":")
            if tag_at > name.rfind("/"):
                name = name[:tag_at]
            if name != image["name"]:
                continue
            new = image.get("newName", name)
            if "digest" in image:
                container["image"] = f"{new}@{image['digest']}"
            elif "newTag" in image:
                container["image"] = f"{new}:{image['newTag']}"
            else:
                container["image"] = new + ref[len(name) :]


# ---------------------------------------------------------------- patches


def _apply_patch(directory: Path, entry: dict[str, Any], items: list[Item]) -> None:
    unknown = set(entry) - {"path", "patch", "target"}
    if unknown or ("path" in entry) == ("patch" in entry):
        raise KustomizeError(f"{directory}: a patch needs exactly one of path/patch (and optionally target)")
    text = _read_local(directory, entry["path"]).read_text(encoding="utf-8") if "path" in entry else entry["patch"]
    body = yaml.safe_load(text)
    target = entry.get("target")
    if isinstance(body, list):  # JSON 6902
        if target is None:
            raise KustomizeError(f"{directory}: a JSON 6902 patch needs a target")
        matched = [i for i in items if _matches(i, target)]
        for item in matched:
            for op in body:
                _json6902(item.obj, op)
    elif isinstance(body, dict):  # strategic merge
        if target is None:
            target = {"kind": body["kind"], "name": body["metadata"]["name"]}
            if "/" in body["apiVersion"]:
                target["group"] = body["apiVersion"].split("/")[0]
        matched = [i for i in items if _matches(i, target)]
        for item in matched:
            patch = copy.deepcopy(body)
            if "metadata" in patch:
                patch["metadata"] = {k: v for k, v in patch["metadata"].items() if k not in ("name", "namespace")}
            item.obj = strategic_merge(item.obj, patch, custom=_is_custom(item.obj))
    else:
        raise KustomizeError(f"{directory}: patch {entry} is neither a mapping nor a list of operations")
    if not matched:
        raise KustomizeError(f"{directory}: patch {entry.get('path', '(inline)')} matched no resource")


def _is_custom(obj: dict[str, Any]) -> bool:
    group = obj["apiVersion"].rpartition("/")[0]
    return "." in group and not group.endswith(".k8s.io")


def _matches(item: Item, target: dict[str, Any]) -> bool:
    unknown = set(target) - {"group", "version", "kind", "name", "namespace"}
    if unknown:
        raise KustomizeError(f"patch target fields {sorted(unknown)} are not supported")
    obj = item.obj
    group, _, version = obj["apiVersion"].rpartition("/")
    actual = {
        "group": group,
        "version": version,
        "kind": obj["kind"],
        "name": item.generated or obj["metadata"]["name"],
        "namespace": obj["metadata"].get("namespace", ""),
    }
    return all(actual[field] == value for field, value in target.items())


def strategic_merge(base: Any, patch: Any, *, custom: bool, field: str = "") -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = strategic_merge(merged[key], value, custom=custom, field=key)
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    if isinstance(base, list) and isinstance(patch, list) and not custom and MERGE_KEYS.get(field):
        key = MERGE_KEYS[field]
        merged_list = [copy.deepcopy(x) for x in base]
        for element in patch:
            match = next((i for i, x in enumerate(merged_list) if x.get(key) == element.get(key)), None)
            if match is None:
                merged_list.append(copy.deepcopy(element))
            else:
                merged_list[match] = strategic_merge(merged_list[match], element, custom=custom, field=field)
        return merged_list
    return copy.deepcopy(patch)


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise KustomizeError(f"JSON pointer {path!r} must start with /")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _json6902(obj: dict[str, Any], op: dict[str, Any]) -> None:
    parts = _pointer(op["path"])
    parent: Any = obj
    for part in parts[:-1]:
        parent = parent[int(part)] if isinstance(parent, list) else parent[part]
    last = parts[-1]
    kind = op["op"]
    if kind == "add":
        if isinstance(parent, list):
            parent.insert(len(parent) if last == "-" else int(last), copy.deepcopy(op["value"]))
        else:
            parent[last] = copy.deepcopy(op["value"])
    elif kind == "replace":
        if isinstance(parent, list):
            parent[int(last)] = copy.deepcopy(op["value"])
        else:
            if last not in parent:
                raise KustomizeError(f"replace: {op['path']} does not exist")
            parent[last] = copy.deepcopy(op["value"])
    elif kind == "remove":
        del parent[int(last) if isinstance(parent, list) else last]
    else:
        raise KustomizeError(f"JSON 6902 op {kind!r} is not supported")
