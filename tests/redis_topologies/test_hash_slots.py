"""Every key one Redis operation of the gateway touches lies in one hash slot, so each works
on a Redis Cluster as on one server (a script or command across slots fails there with
CROSSSLOT; on one server nothing would tell).

The gateway's source is read (its syntax tree) for every script it sends (`eval`,
`register_script`) and every command that can name several keys; each script must have a
row in `SCRIPTS` below, which builds its KEYS with the gateway's own key functions from
many inputs and checks they share one slot (`redis.crc.key_slot`, what redis-py's
cluster client routes by). A new script, or a script called with other keys, fails here
until it has its row. The Lua itself is read too: every key it touches is one of its
KEYS (a key name built inside a script could lie in any slot)."""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis.crc import key_slot

from gateway import budget_ledger_redis, cache_redis, idempotency_redis
from gateway._gen.stablecog.v1 import generation_pb2
from gateway.account import account_scope
from gateway.cache_key import cache_key
from gateway.idempotency import record_id
from gateway.media import upscale_cache_key

GATEWAY = Path(__file__).resolve().parents[2] / "gateway"

# Inputs the key functions are given: the shapes the gateway makes, and awkward ones (a
# brace in a caller's name or a key must not move one of its keys to another slot).
SCOPES = [account_scope(f"sc-{n:064x}", url) for n, url in enumerate(
    ["https://api.stablecog.com", "http://127.0.0.1:8000", "http://[::1]:1/{x}"]
)]  # fmt: skip
REQUESTS = [
    generation_pb2.GenerationRequest(prompt="a {red} fox", seed=1),
    generation_pb2.GenerationRequest(prompt="}{", seed=2**32 - 1, num_outputs=4),
    generation_pb2.GenerationRequest(prompt="über", seed=0, width=512, height=768),
]
UPSCALES = [
    generation_pb2.CreateUpscaleRequest(input="0b7f7a3e-1f0c-4a3e-9a51-2f6c1d9e8b7a"),
    generation_pb2.CreateUpscaleRequest(
        input="0B7F7A3E-1F0C-4A3E-9A51-2F6C1D9E8B7A", model_id="{model}"
    ),
]
CALLERS = ["search", "spiffe://cluster.local/ns/a/sa/{b}", "}", "{}", "ünïcode", ""]
IDEMPOTENCY_KEYS = ["order-1", "{tag}", "}{", "x" * 255]
TOKENS = ["0" * 32, "{token}", "f00d"]


def cache_keys() -> Iterator[str]:
    """Every entry key the caches make: generations and upscales, in several scopes."""
    for scope in SCOPES:
        for req in REQUESTS:
            yield cache_key(req, scope)
        for upscale in UPSCALES:
            key = upscale_cache_key(upscale, scope)
            assert key is not None
            yield key


def records() -> Iterator[str]:
    for scope in SCOPES:
        for key in IDEMPOTENCY_KEYS:
            yield record_id(scope, key)


def lock_keys() -> Iterator[list[str]]:
    return ([cache_redis._lock_key(key)] for key in cache_keys())


def balance_keys() -> Iterator[list[str]]:
    return ([cache_redis._balance_key(scope)] for scope in SCOPES)


def idempotency_keys() -> Iterator[list[str]]:
    return (list(idempotency_redis._keys(record)) for record in records())


def idempotency_keys_and_void() -> Iterator[list[str]]:
    for record in records():
        for token in TOKENS:
            yield [*idempotency_redis._keys(record), idempotency_redis._void(record, token)]


def budget_keys() -> Iterator[list[str]]:
    return (budget_ledger_redis.caller_keys(caller) for caller in CALLERS)


@dataclass(frozen=True)
class Script:
    """How the gateway calls one script: the keys as its call site writes them (the start
    of the arguments after `numkeys` for `eval`, the `keys=` argument of a registered
    script), and the same keys built by the gateway's functions from many inputs."""

    keys_source: str
    keys: Callable[[], Iterator[list[str]]]


# (module, the script's constant) -> how it is called.
SCRIPTS: dict[tuple[str, str], Script] = {
    ("cache_redis", "_OFFER_BALANCE"): Script("_balance_key(scope)", balance_keys),
    ("cache_redis", "_REFRESH"): Script("_lock_key(key)", lock_keys),
    ("cache_redis", "_UNLOCK"): Script("_lock_key(key)", lock_keys),
    ("idempotency_redis", "_CLAIM"): Script(
        "*_keys(record), _void(record, token)", idempotency_keys_and_void
    ),
    ("idempotency_redis", "_READ"): Script("*_keys(record)", idempotency_keys),
    ("idempotency_redis", "_REFRESH"): Script("*_keys(record)", idempotency_keys),
    ("idempotency_redis", "_FINISH"): Script("*_keys(record)", idempotency_keys),
    ("idempotency_redis", "_RELEASE"): Script(
        "*_keys(record), _void(record, token)", idempotency_keys_and_void
    ),
    ("budget_ledger_redis", "_RESERVE"): Script("caller_keys(caller)", budget_keys),
    ("budget_ledger_redis", "_SETTLE"): Script("caller_keys(caller)", budget_keys),
    ("budget_ledger_redis", "_USAGE"): Script("caller_keys(caller)", budget_keys),
}

# redis-py methods that can name several keys: the gateway may call them with one.
MULTI_KEY = frozenset(
    [
        "mget",
        "mset",
        "msetnx",
        "delete",
        "unlink",
        "exists",
        "touch",
        "rename",
        "renamenx",
        "copy",
        "move",
        "sinter",
        "sunion",
        "sdiff",
        "sinterstore",
        "sunionstore",
        "sdiffstore",
        "smove",
        "zunion",
        "zinter",
        "zdiff",
        "zunionstore",
        "zinterstore",
        "zdiffstore",
        "pfcount",
        "pfmerge",
        "blpop",
        "brpop",
        "blmove",
        "lmove",
        "rpoplpush",
        "brpoplpush",
        "bitop",
        "watch",
        "xread",
        "xreadgroup",
        "sort",
        "sort_ro",
        "lmpop",
        "zmpop",
        "bzmpop",
        "blmpop",
    ]
)
# Ways to send a script, or several commands at once, that no row here covers.
UNCOVERED = frozenset(
    [
        "evalsha",
        "eval_ro",
        "evalsha_ro",
        "fcall",
        "fcall_ro",
        "script_load",
        "pipeline",
        "transaction",
        "execute_command",
        "function_load",
    ]
)


@dataclass(frozen=True)
class Site:
    module: str
    line: int
    script: str
    numkeys: int | None  # eval's literal; None for a registered script
    keys_source: str


def _modules() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(GATEWAY.glob("*.py")):
        yield path.stem, ast.parse(path.read_text(), str(path))


def _method(node: ast.AST) -> str | None:
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return node.func.attr
    return None


def script_sites() -> tuple[list[Site], list[str]]:
    """Every `eval(SCRIPT, numkeys, *keys, ...)` and every call of a script registered
    with `x.attr = client.register_script(SCRIPT)` (as `self.attr(keys=..., ...)`); and
    the ways of sending a script this scan cannot read."""
    sites: list[Site] = []
    unreadable: list[str] = []
    for module, tree in _modules():
        registered: dict[str, str] = {}
        assigned: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and _method(node.value) == "register_script":
                call = node.value
                assert isinstance(call, ast.Call)
                assigned.add(id(call))
                target = node.targets[0]
                if isinstance(target, ast.Attribute) and isinstance(call.args[0], ast.Name):
                    registered[target.attr] = call.args[0].id
                else:
                    unreadable.append(f"gateway/{module}.py:{node.lineno}: register_script")
        for node in ast.walk(tree):
            name = _method(node)
            if not isinstance(node, ast.Call) or name is None:
                continue
            where = f"gateway/{module}.py:{node.lineno}"
            if name == "eval":
                script, numkeys, *rest = node.args
                if not isinstance(script, ast.Name) or not isinstance(numkeys, ast.Constant):
                    unreadable.append(f"{where}: eval of a non-constant script or numkeys")
                    continue
                source = ", ".join(ast.unparse(arg) for arg in rest)
                sites.append(Site(module, node.lineno, script.id, numkeys.value, source))
            elif name in registered:
                keys = [k.value for k in node.keywords if k.arg == "keys"]
                if not keys:
                    unreadable.append(f"{where}: a registered script called without keys=")
                    continue
                sites.append(
                    Site(module, node.lineno, registered[name], None, ast.unparse(keys[0]))
                )
            elif name == "register_script" and id(node) not in assigned:
                unreadable.append(f"{where}: register_script not assigned to an attribute")
    return sites, unreadable


SITES, UNREADABLE = script_sites()


def test_every_script_the_gateway_sends_has_a_row_and_every_row_a_call() -> None:
    assert UNREADABLE == []
    found = {(site.module, site.script) for site in SITES}
    assert found - SCRIPTS.keys() == set(), "scripts with no row in SCRIPTS: add one"
    assert SCRIPTS.keys() - found == set(), "rows in SCRIPTS for scripts nobody sends"
    assert len(found) >= 11  # the three stores' scripts (the scan itself works)


@pytest.mark.parametrize("site", SITES, ids=lambda s: f"{s.module}:{s.line}:{s.script}")
def test_each_call_passes_keys_of_one_hash_slot(site: Site) -> None:
    row = SCRIPTS[(site.module, site.script)]
    assert site.keys_source == row.keys_source or site.keys_source.startswith(
        row.keys_source + ", "
    ), f"gateway/{site.module}.py:{site.line} passes KEYS {site.keys_source!r}: update its row"
    lua = getattr(_module(site.module), site.script)
    built = list(row.keys())
    assert len(built) >= 3
    for keys in built:
        if site.numkeys is not None:
            assert len(keys) == site.numkeys, keys
        assert max(_key_indexes(lua)) == len(keys), (site.script, keys)
        assert len({key_slot(key.encode()) for key in keys}) == 1, keys


@pytest.mark.parametrize("script", sorted(SCRIPTS), ids=lambda s: f"{s[0]}.{s[1]}")
def test_each_script_touches_only_its_keys(script: tuple[str, str]) -> None:
    """The first argument of every `redis.call` is one of KEYS (or a local bound to one)."""
    lua = getattr(_module(script[0]), script[1])
    aliases = set()
    for names, values in re.findall(r"local +([\w ,]+?) *= *(KEYS\[\d+\][^\n]*)", lua):
        bound = [v.strip() for v in values.split(",")]
        assert all(re.fullmatch(r"KEYS\[\d+\]", v) for v in bound), values
        aliases.update(n.strip() for n in names.split(","))
    calls = re.findall(r"redis\.call\(\s*'(\w+)'\s*,\s*([^,)]+)", lua)
    assert calls, script
    for command, key in calls:
        key = key.strip()
        assert re.fullmatch(r"KEYS\[\d+\]", key) or key in aliases, (command, key)
    assert "redis.pcall" not in lua and "KEYS[" + "#" not in lua


def _imports_redis(tree: ast.Module) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(
            a.name.split(".")[0] == "redis" for a in node.names
        ):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "redis":
            return True
    return False


REDIS_MODULES = {module: tree for module, tree in _modules() if _imports_redis(tree)}


def test_the_modules_talking_to_redis_are_the_ones_read_here() -> None:
    """A new module using redis-py must be looked at: add it here once its commands are."""
    assert sorted(REDIS_MODULES) == [
        "budget_ledger_redis", "cache_redis", "idempotency_redis", "redis_client"
    ]  # fmt: skip


def test_no_command_names_several_keys_outside_scripts() -> None:
    for module, tree in REDIS_MODULES.items():
        for node in ast.walk(tree):
            name = _method(node)
            if not isinstance(node, ast.Call) or name is None:
                continue
            where = f"gateway/{module}.py:{node.lineno}"
            assert name not in UNCOVERED, f"{where}: {name} is not covered by this test"
            if name in MULTI_KEY:
                assert len(node.args) == 1 and not isinstance(node.args[0], ast.Starred), (
                    f"{where}: {name} of several keys (they may lie in several slots)"
                )


def test_the_scan_sees_single_key_commands() -> None:
    """The multi-key scan is not vacuous: it finds the one `delete` the cache sends."""
    deletes = [
        (module, node.lineno)
        for module, tree in _modules()
        for node in ast.walk(tree)
        if _method(node) == "delete" and module == "cache_redis"
    ]
    assert len(deletes) == 1


def _module(name: str) -> object:
    return {
        "cache_redis": cache_redis,
        "idempotency_redis": idempotency_redis,
        "budget_ledger_redis": budget_ledger_redis,
    }[name]


def _key_indexes(lua: str) -> list[int]:
    return [int(n) for n in re.findall(r"KEYS\[(\d+)\]", lua)]
