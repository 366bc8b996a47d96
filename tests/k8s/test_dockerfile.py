"""The Dockerfile and .dockerignore, checked statically (no Docker engine runs here)."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from gateway.config import Settings
from tests.k8s.manifests import REPO
from tests.k8s.policy import failed_checks

DOCKERFILE = REPO / "Dockerfile"
PINNED_PYTHON = re.compile(r"python:3\.11\.\d+-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?")
COMPILERS = re.compile(r"\b(build-essential|gcc|g\+\+|clang|cc|make|cmake|rustc|cargo)\b")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [a for k, a in self.instructions if k == keyword]


def parse_dockerfile(text: str) -> list[Stage]:
    """Stages of (INSTRUCTION, arguments), with continuations joined and comments dropped."""
    logical, pending = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        if (pending + line).strip():
            logical.append(pending + line)
        pending = ""
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.strip().partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        elif stages:
            stages[-1].instructions.append((keyword, rest))
        else:
            assert keyword == "ARG", f"{keyword} before the first FROM"
    return stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


def test_multi_stage_on_one_pinned_base(stages: list[Stage]) -> None:
    assert len(stages) >= 2, "build in a builder stage and copy the venv into a clean final one"
    for stage in stages:
        assert "$" not in stage.base, f"FROM {stage.base}: spell the image out (checkov reads it)"
        assert PINNED_PYTHON.fullmatch(stage.base), (
            f"FROM {stage.base}: pin python:3.11.<patch>-slim[-<debian>] (a moving tag such as "
            "python:3.11-slim or latest rebuilds differently every week)"
        )
    assert len({s.base for s in stages}) == 1, (
        "builder and final stage must share the base: the venv links the base's interpreter"
    )


def test_final_stage_copies_only_the_venv(stages: list[Stage]) -> None:
    builder, final = stages[0], stages[-1]
    assert builder.name, "name the builder stage (FROM ... AS builder)"
    copies = final.args("COPY") + final.args("ADD")
    assert copies, "the final stage copies nothing"
    for copy in copies:
        assert copy.startswith(f"--from={builder.name} "), (
            f"final stage: COPY {copy}: only the builder's venv belongs there"
        )
    assert all("pip install" not in run for run in final.args("RUN")), "no pip in the final stage"


def test_no_compilers_in_the_final_stage(stages: list[Stage]) -> None:
    for run in stages[-1].args("RUN"):
        assert not re.search(r"\bapt(-get)?\s+install\b", run), f"final stage installs: {run}"
        assert not COMPILERS.search(run), f"final stage mentions a build tool: {run}"


def test_final_stage_runs_as_a_numeric_non_root_user(stages: list[Stage]) -> None:
    users = stages[-1].args("USER")
    assert users, "the final stage sets no USER, so the gateway would run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) > 0, (
        f"USER {users[-1]}: use a numeric uid, which Kubernetes' runAsNonRoot can verify"
    )
    assert not gid or (gid.isdigit() and int(gid) > 0), f"USER {users[-1]}: numeric gid"


def test_entrypoint_ports_and_python_settings(stages: list[Stage]) -> None:
    final = stages[-1]
    (entrypoint,) = final.args("ENTRYPOINT")
    assert json.loads(entrypoint) == ["stablecog-gateway"], "exec form, so SIGTERM reaches it"
    exposed = {int(p.split("/")[0]) for e in final.args("EXPOSE") for p in e.split()}
    defaults = Settings()
    ports = {int(a.rpartition(":")[2]) for a in (defaults.listen, defaults.metrics_listen)}
    assert exposed == ports, f"EXPOSE {sorted(exposed)}, the gateway listens on {sorted(ports)}"
    env = " ".join(final.args("ENV"))
    for setting in ("PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1"):
        assert setting in env, f"final stage: ENV {setting}"


def test_builder_installs_from_the_lock(stages: list[Stage]) -> None:
    runs = " ".join(stages[0].args("RUN"))
    assert re.search(r"--constraint requirements\.lock|-c requirements\.lock", runs), (
        "install the dependencies at the versions of requirements.lock"
    )
    assert "--only-binary=:all:" in runs, "wheels only: the builder needs no compiler"
    assert re.search(r"pip install --no-deps \.", runs), "install the project with --no-deps"


def _locked(name: str) -> dict[str, str]:
    pins = {}
    for line in (REPO / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            requirement = Requirement(line)
            pins[canonicalize_name(requirement.name)] = str(requirement.specifier)
    return pins


def _closure(requirements: list[str]) -> set[str]:
    """The distributions these requirements pull in here, following installed metadata."""
    pending = [Requirement(r) for r in requirements]
    seen: set[str] = set()
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        if name in seen or (requirement.marker and not requirement.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        try:
            requires = metadata.distribution(requirement.name).requires or []
        except metadata.PackageNotFoundError:
            pytest.fail(f"{requirement.name} is not installed: cannot follow its dependencies")
        pending += [Requirement(r) for r in requires]
    return seen


PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def test_every_runtime_dependency_is_pinned_by_the_lock() -> None:
    # The image installs pyproject's dependencies with the lock as constraints: anything the
    # lock does not pin would be resolved afresh at build time.
    locked = _locked("requirements.lock")
    for name in sorted(_closure(PROJECT["dependencies"])):
        assert locked.get(name, "").startswith("=="), (
            f"{name} (needed at run time) is not pinned in requirements.lock"
        )


def test_the_runtime_lock_holds_nothing_else() -> None:
    # `make run` installs requirements.lock alone: development tools belong elsewhere.
    extra = set(_locked("requirements.lock")) - _closure(PROJECT["dependencies"])
    assert not extra, (
        f"requirements.lock pins {sorted(extra)}, which pyproject's dependencies do not need: "
        "move development tools to requirements-dev.lock"
    )


def test_the_dev_lock_adds_exactly_the_development_tools() -> None:
    text = (REPO / "requirements-dev.lock").read_text()
    assert "-r requirements.lock" in text.splitlines(), "include the runtime lock"
    runtime, dev = _locked("requirements.lock"), _locked("requirements-dev.lock")
    unpinned = sorted(name for name, spec in dev.items() if not spec.startswith("=="))
    assert not unpinned, f"requirements-dev.lock: pin {unpinned} exactly (==)"
    both = sorted(set(runtime) & set(dev))
    assert not both, f"{both}: pinned in requirements.lock, leave them out of the dev lock"
    wanted = _closure(PROJECT["optional-dependencies"]["dev"]) - set(runtime)
    assert not wanted - set(dev), (
        f"{sorted(wanted - set(dev))} (pulled in by the dev extra) not in requirements-dev.lock"
    )
    assert not set(dev) - wanted, (
        f"requirements-dev.lock pins {sorted(set(dev) - wanted)}, which the dev extra does not need"
    )


def _glob(pattern: str) -> str:
    """A .dockerignore pattern as a regex: * and ? stay within a path segment, ** spans them."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[" and "]" in pattern[i:]:
            close = pattern.index("]", i)
            out, i = out + pattern[i : close + 1], close + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return out


def _dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _glob(pattern.lstrip("!").strip("/"))
        if any(re.fullmatch(regex, c) for c in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_admits_what_the_build_copies_and_nothing_else(stages: list[Stage]) -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = []
    for copy in stages[0].args("COPY"):
        words = [w for w in shlex.split(copy) if not w.startswith("--")]
        sources += words[:-1]
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: no such file in the repository"
        assert not _dockerignore_excludes(source, patterns), f".dockerignore excludes {source}"
    for kept_out in (".git/config", ".venv/bin/python", "tests/conftest.py", "k8s/base/x.yaml"):
        assert _dockerignore_excludes(kept_out, patterns), f".dockerignore lets {kept_out} in"
    assert _dockerignore_excludes("gateway/__pycache__/config.cpython-311.pyc", patterns)


def test_checkov_dockerfile_checks_pass() -> None:
    failed = [f for f in failed_checks() if f["check_id"].startswith(("CKV_DOCKER", "CKV2_DOCKER"))]
    assert not failed, "checkov: " + "; ".join(
        f"{f['check_id']} {f['check_name']} (line {f['file_line_range']})" for f in failed
    )
