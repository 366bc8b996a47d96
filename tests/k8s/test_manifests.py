"""The rendered Kubernetes manifests: valid, consistent with the gateway, and locked down."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path, PurePosixPath

import kubernetes_validate
import pytest

from gateway.config import OPTIONS, ConfigError, environment_variables, load_settings
from tests.k8s.manifests import (
    HEALTH_SERVICE,
    MONITORING_VARIANTS,
    REPO,
    VARIANTS,
    Doc,
    Variant,
    config_maps,
    containers,
    gateway_containers,
    ident,
    port_of,
    render,
    resolved_env,
    workloads,
)
from tests.k8s.policy import failed_checks

# The Kubernetes release the manifests are checked against, and the oldest they support:
# native sidecars are on by default from 1.29, the preStop sleep action from 1.30.
KUBERNETES_VERSIONS = ("1.30", "1.33")
# Seconds the pod's termination budget must exceed the gateway's own drain.
MIN_GRACE_MARGIN = 10
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
DEFAULT_LISTEN = "0.0.0.0:50051"
DEFAULT_METRICS_LISTEN = "0.0.0.0:9464"

variants = pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
# Values that exist only in the running pod (from Secrets), as the gateway would see them.
RUNTIME_SAMPLES = {"GATEWAY_REDIS_URL": "redis://from-a-secret:6379/0"}
# The settings that name a file (the *_FILE ones, the budget policy, the caller tokens).
FILE_SETTINGS = frozenset(o.env for o in OPTIONS if o.metavar is None and o.shown_value == "FILE")
# Files that hold no secret and may come from a ConfigMap.
CONFIG_MAP_FILES = frozenset({"GATEWAY_BUDGETS"})


def gateway_envs(variant: Variant) -> list[tuple[str, Doc, Doc, dict[str, str | None]]]:
    """(where, pod template, container, resolved env) for each gateway container."""
    docs = render(variant)
    found = []
    for workload, template, field, container in gateway_containers(docs):
        env, problems = resolved_env(container, template, docs)
        assert not problems, f"{variant.name} {ident(workload)}: {problems}"
        found.append((f"{variant.name} {ident(workload)} {field}", template, container, env))
    assert found, f"{variant.name}: no container named stablecog-gateway rendered"
    return found


@variants
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_validate_strictly(variant: Variant, version: str) -> None:
    errors = []
    for doc in render(variant):
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.absolute_path) or "(top)"
            errors.append(f"{ident(doc)} at {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(f"{ident(doc)}: {exc.message}")
    assert not errors, f"{variant.name} is not valid Kubernetes {version}:\n" + "\n".join(errors)


@pytest.mark.parametrize("variant", MONITORING_VARIANTS, ids=lambda v: v.name)
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_monitoring_core_objects_validate_strictly(variant: Variant, version: str) -> None:
    # The PodMonitor and PrometheusRule are CRDs: tests/k8s/test_monitoring.py checks them.
    for doc in render(variant):
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue
        kubernetes_validate.validate(doc, version, strict=True)


@variants
def test_gateway_reads_every_variable_set(variant: Variant) -> None:
    known = environment_variables()
    maps = config_maps(render(variant))
    hint = "(gateway.config.environment_variables() lists those it reads)"
    for where, _, container, _ in gateway_envs(variant):
        unknown = sorted({e["name"] for e in container.get("env") or ()} - known)
        assert not unknown, f"{where}: env sets {unknown}, which the gateway never reads {hint}"
        for source in container.get("envFrom") or ():
            assert "prefix" not in source, f"{where}: an envFrom prefix renames the settings"
            name = source["configMapRef"]["name"]
            unknown = sorted(set(maps[name].get("data") or {}) - known)
            assert not unknown, (
                f"{where}: ConfigMap {name} holds {unknown}, which the gateway never reads {hint}"
            )


@variants
def test_settings_parse_with_the_gateways_own_loader(variant: Variant, tmp_path: Path) -> None:
    for where, _, _, env in gateway_envs(variant):
        environ = {k: v if v is not None else RUNTIME_SAMPLES.get(k) for k, v in env.items()}
        environ = {k: v for k, v in environ.items() if v is not None}
        # Files exist only in the pod: point the *_FILE settings at a local stand-in.
        for name in environ:
            if name in FILE_SETTINGS:
                stand_in = tmp_path / name
                stand_in.write_text("stand-in\n")
                environ[name] = str(stand_in)
        try:
            load_settings([], environ)
        except ConfigError as exc:
            pytest.fail(f"{where}: the gateway would refuse to start: {exc}")


@variants
def test_api_key_comes_from_a_mounted_secret_file(variant: Variant) -> None:
    for where, _, _, env in gateway_envs(variant):
        assert "STABLECOG_API_KEY" not in env, (
            f"{where}: mount the key as a file (STABLECOG_API_KEY_FILE); "
            "an environment variable is neither rotated nor kept out of `kubectl describe`"
        )
        assert env.get("STABLECOG_API_KEY_FILE"), f"{where}: STABLECOG_API_KEY_FILE is not set"


@variants
def test_files_are_secret_keys_mounted_as_directories(variant: Variant) -> None:
    for where, template, container, env in gateway_envs(variant):
        volumes = {v["name"]: v for v in template["spec"].get("volumes") or ()}
        mounts = container.get("volumeMounts") or ()
        for mount in mounts:
            assert "subPath" not in mount and "subPathExpr" not in mount, (
                f"{where}: volume {mount['name']!r} is mounted with a subPath; the kubelet "
                "never updates such a mount, so a rotated key or certificate would not arrive"
            )
        for name, value in env.items():
            if name not in FILE_SETTINGS or value is None:
                continue
            path = PurePosixPath(value)
            mount = next((m for m in mounts if path.parent == PurePosixPath(m["mountPath"])), None)
            assert mount is not None, f"{where}: {name}={value} is in no mounted directory"
            volume = volumes.get(mount["name"])
            kinds = ("secret", "configMap") if name in CONFIG_MAP_FILES else ("secret",)
            assert volume and any(k in volume for k in kinds), (
                f"{where}: {name} must come from a {' or '.join(kinds)}"
            )
            source = volume.get("secret") or volume["configMap"]
            items = {i["path"]: i["key"] for i in source.get("items") or ()}
            assert not items or path.name in items, (
                f"{where}: {name} names {path.name!r}, but "
                f"{source.get('secretName') or source.get('name')!r} projects only {sorted(items)}"
            )
            assert mount.get("readOnly") is True, f"{where}: mount {mount['name']!r} read-only"


@variants
def test_api_key_secret_matches_the_documented_command(variant: Variant) -> None:
    # docs/deploy.md: kubectl create secret generic stablecog-api-key --from-file=api-key=...
    for where, template, _, env in gateway_envs(variant):
        key_file = PurePosixPath(env["STABLECOG_API_KEY_FILE"] or "")
        volumes = [v["secret"] for v in template["spec"].get("volumes") or () if "secret" in v]
        api = [s for s in volumes if s["secretName"] == "stablecog-api-key"]
        assert api, f"{where}: no volume from the Secret stablecog-api-key"
        keys = {i["path"]: i["key"] for i in api[0].get("items") or ()}
        assert keys.get(key_file.name, key_file.name) == "api-key", where


@variants
def test_ports_are_those_the_gateway_opens(variant: Variant) -> None:
    for where, _, container, env in gateway_envs(variant):
        listen = env.get("GATEWAY_LISTEN") or DEFAULT_LISTEN
        metrics = env.get("GATEWAY_METRICS_LISTEN") or DEFAULT_METRICS_LISTEN
        opened = {port_of(listen), port_of(metrics)}
        declared = {p["containerPort"] for p in container.get("ports") or ()}
        assert declared == opened, (
            f"{where}: declares ports {sorted(declared)} but the gateway listens on "
            f"{sorted(opened)} (GATEWAY_LISTEN={listen}, GATEWAY_METRICS_LISTEN={metrics})"
        )
        for address in (listen, metrics):
            host = address.rpartition(":")[0]
            assert host in ("0.0.0.0", "[::]", "::"), (
                f"{where}: {address} is not reachable on the pod IP, where the kubelet's "
                "probes and Prometheus connect"
            )


@variants
def test_probes_ask_the_grpc_health_service(variant: Variant) -> None:
    for where, _, container, env in gateway_envs(variant):
        grpc_port = port_of(env.get("GATEWAY_LISTEN") or DEFAULT_LISTEN)
        tls = bool(env.get("GATEWAY_TLS_CERT_FILE"))
        for kind in PROBES:
            probe = container.get(kind)
            assert probe, f"{where}: no {kind}"
            if "grpc" in probe:
                assert not tls, (
                    f"{where}: {kind} is a gRPC probe on a TLS port; the kubelet's gRPC "
                    "probes speak plaintext and would always fail"
                )
                assert probe["grpc"]["port"] == grpc_port, (
                    f"{where}: {kind} probes port {probe['grpc']['port']}, "
                    f"the gateway serves gRPC on {grpc_port}"
                )
                service = probe["grpc"].get("service", "")
                assert service in (HEALTH_SERVICE, ""), (
                    f"{where}: {kind} asks for health service {service!r}; the gateway "
                    f"reports {HEALTH_SERVICE!r} and the overall status ''"
                )
                if kind != "livenessProbe":
                    assert service == HEALTH_SERVICE, (
                        f"{where}: {kind} should ask for {HEALTH_SERVICE} (ready to serve)"
                    )
            elif "tcpSocket" in probe:
                assert tls, f"{where}: {kind} must be a gRPC probe when the port is plaintext"
                assert probe["tcpSocket"]["port"] == grpc_port, f"{where}: {kind} port"
            else:
                pytest.fail(f"{where}: {kind} is neither a gRPC nor (with TLS) a TCP probe")


@variants
def test_grace_period_covers_the_drain(variant: Variant) -> None:
    for where, template, container, env in gateway_envs(variant):
        grace = float(env.get("GATEWAY_GRACE_PERIOD") or 300)
        pre_stop = (container.get("lifecycle") or {}).get("preStop") or {}
        pause = (pre_stop.get("sleep") or {}).get("seconds", 0)
        budget = template["spec"].get("terminationGracePeriodSeconds", 30)
        assert budget >= pause + grace + MIN_GRACE_MARGIN, (
            f"{where}: terminationGracePeriodSeconds={budget} leaves no margin over the "
            f"{pause} s preStop pause plus GATEWAY_GRACE_PERIOD={grace:g}; the kubelet would "
            f"kill calls still draining (want at least {pause + grace + MIN_GRACE_MARGIN:g})"
        )


@variants
def test_gateway_is_a_native_sidecar_where_it_shares_a_pod(variant: Variant) -> None:
    fields = set()
    for where, _, container, _ in gateway_envs(variant):
        field = where.rsplit(" ", 1)[1]
        fields.add(field)
        if field == "initContainers":
            assert container.get("restartPolicy") == "Always", (
                f"{where}: the gateway init container needs restartPolicy: Always (a native "
                "sidecar); as a plain init container it would block the pod's start for ever"
            )
    wanted = {"initContainers"} if variant.sidecar else {"containers"}
    assert fields == wanted, f"{variant.name}: the gateway belongs in {wanted}, found in {fields}"


@variants
def test_gateway_image_is_the_project_version(variant: Variant) -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for where, _, container, _ in gateway_envs(variant):
        image = container["image"]
        assert re.fullmatch(r"(.+/)?stablecog-gateway:[\w.-]+", image), f"{where}: {image}"
        assert image.rpartition(":")[2] == project["version"], (
            f"{where}: image {image} does not match the project version {project['version']}"
        )


@variants
def test_gateway_runs_as_the_images_user(variant: Variant) -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\d+)", dockerfile, re.MULTILINE)
    assert users, "the Dockerfile sets no numeric USER"
    for where, template, container, _ in gateway_envs(variant):
        uid = (container.get("securityContext") or {}).get("runAsUser") or (
            template["spec"].get("securityContext") or {}
        ).get("runAsUser")
        assert str(uid) == users[-1], f"{where}: runAsUser {uid}, the image's USER {users[-1]}"


def _effective(pod_context: Doc, container_context: Doc, key: str) -> object:
    return container_context.get(key, pod_context.get(key))


@pytest.mark.parametrize("variant", VARIANTS + MONITORING_VARIANTS, ids=lambda v: v.name)
def test_every_container_is_locked_down(variant: Variant) -> None:
    problems = []
    for workload, template in workloads(render(variant)):
        spec = template["spec"]
        pod = spec.get("securityContext") or {}
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(key):
                problems.append(f"{ident(workload)}: {key}")
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{ident(workload)}: automountServiceAccountToken is not false")
        for _, container in containers(spec):
            where = f"{ident(workload)} container {container['name']}"
            ctx = container.get("securityContext")
            if not ctx:
                problems.append(f"{where}: no securityContext")
                continue
            uid = _effective(pod, ctx, "runAsUser")
            seccomp = _effective(pod, ctx, "seccompProfile") or {}
            checks = {
                "runAsNonRoot: true": _effective(pod, ctx, "runAsNonRoot") is True,
                "a numeric non-root runAsUser": isinstance(uid, int) and uid > 0,
                "readOnlyRootFilesystem: true": ctx.get("readOnlyRootFilesystem") is True,
                "allowPrivilegeEscalation: false": ctx.get("allowPrivilegeEscalation") is False,
                "capabilities.drop: [ALL]": "ALL"
                in (ctx.get("capabilities") or {}).get("drop", ()),
                "no added capabilities": not (ctx.get("capabilities") or {}).get("add"),
                "not privileged": ctx.get("privileged") is not True,
                "seccompProfile RuntimeDefault": seccomp.get("type") == "RuntimeDefault",
            }
            problems += [f"{where}: wants {what}" for what, ok in checks.items() if not ok]
    assert not problems, f"{variant.name}:\n" + "\n".join(problems)


def _quantity(value: str) -> float:
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value))
    assert match and (match[2] in units or not match[2]), f"unexpected quantity {value!r}"
    return float(match[1]) * units.get(match[2], 1)


@pytest.mark.parametrize("variant", VARIANTS + MONITORING_VARIANTS, ids=lambda v: v.name)
def test_every_container_has_requests_and_a_memory_limit(variant: Variant) -> None:
    problems = []
    for workload, template in workloads(render(variant)):
        for _, container in containers(template["spec"]):
            where = f"{ident(workload)} container {container['name']}"
            resources = container.get("resources") or {}
            requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
            for key in ("cpu", "memory"):
                if key not in requests:
                    problems.append(f"{where}: no {key} request")
            if "memory" not in limits:
                problems.append(f"{where}: no memory limit")
            elif "memory" in requests and _quantity(limits["memory"]) < _quantity(
                requests["memory"]
            ):
                problems.append(f"{where}: memory limit below the request")
            # A CPU limit near the request throttles the proxy; see the manifests.
            if "cpu" in limits and _quantity(limits["cpu"]) < 1.0:
                problems.append(f"{where}: a CPU limit, if any, must be generous (>= 1)")
    assert not problems, f"{variant.name}:\n" + "\n".join(problems)


# Standalone callers name themselves with x-caller metadata instead.
@pytest.mark.parametrize("variant", [v for v in VARIANTS if v.sidecar], ids=lambda v: v.name)
def test_sidecar_caller_name_comes_from_the_pod_label(variant: Variant) -> None:
    for where, template, container, env in gateway_envs(variant):
        (caller,) = [e for e in container["env"] if e["name"] == "GATEWAY_CALLER"]
        field = caller["valueFrom"]["fieldRef"]["fieldPath"]
        assert field == "metadata.labels['app.kubernetes.io/name']", where
        assert env["GATEWAY_CALLER"] == template["metadata"]["labels"]["app.kubernetes.io/name"]


# Findings checkov reports that the manifests accept on purpose.
CHECKOV_ACCEPTED = {
    "CKV_K8S_21": "no namespace: set by `kubectl apply -n` or the user's overlay",
    "CKV_K8S_11": "no CPU limit on purpose: CFS throttling hurts a proxy's latency",
    "CKV_K8S_43": "digests exist once the image is pushed: pin them in the user's overlay",
    "CKV_K8S_15": "tags are pinned; IfNotPresent spares a registry round trip per restart",
}
CHECKOV_ACCEPTED_FOR = {
    ("CKV_K8S_8", "example-app"): "the stand-in application has nothing to probe",
    ("CKV_K8S_9", "example-app"): "the stand-in application has nothing to probe",
}


def test_checkov_kubernetes_checks_pass() -> None:
    failed = [f for f in failed_checks() if f["check_id"].startswith(("CKV_K8S", "CKV2_K8S"))]
    unexpected = sorted(
        {
            f"{f['check_id']} {f['check_name']}: {f['resource']}"
            for f in failed
            if f["check_id"] not in CHECKOV_ACCEPTED
            and (f["check_id"], f["resource"].rpartition(".")[2]) not in CHECKOV_ACCEPTED_FOR
        }
    )
    assert not unexpected, "checkov:\n" + "\n".join(unexpected)


def test_the_budget_policy_in_k8s_is_one_the_gateway_accepts() -> None:
    from gateway.budget_policy import parse_policy
    from tests.k8s.manifests import K8S

    policy = parse_policy((K8S / "components" / "budgets" / "budgets.yaml").read_text())
    assert policy.default is not None and policy.callers
