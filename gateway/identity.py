"""Who is calling: the caller identity that metrics, logs and budgets use. Pure: no I/O.

Three modes (`--identity`):

- `sidecar`: the caller is the pod the sidecar serves; its name is configuration
  (`--caller` / GATEWAY_CALLER, set by the manifests).
- `mtls`: the caller is named by its client certificate (a SAN or the subject CN, as
  `--mtls-identity` says); the listener must require client certificates.
- `token`: the caller sends `authorization: Bearer <gateway token>`; the gateway knows
  only SHA-256 digests of the tokens (gateway.identity_files reads them). The Stablecog key
  stays in the gateway: this mode needs a configured key, so the token is never forwarded.

`x-caller` metadata (`--x-caller`): `name` takes it as the caller's name (the behaviour
before identities, unauthenticated: refused with budgets or in the mtls and token modes);
`refine` appends it to the authenticated name (`search:indexer`) for metrics and logs,
while budgets stay with the authenticated name; `ignore` drops it. `auto` is `name` in
sidecar mode without budgets, else `ignore`.

A caller that proves no identity (no certificate name, no token, an unknown token) is
refused UNAUTHENTICATED, or, with `--unauthenticated default`, served as the configured
default caller (and its budget).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from gateway.errors import CallerUnauthenticated
from gateway.labels import distinct_label, sanitize_label

MODES = ("sidecar", "mtls", "token")
X_CALLER_MODES = ("auto", "name", "refine", "ignore")
UNAUTHENTICATED_MODES = ("reject", "default")
# The certificate field naming an mTLS caller -> the grpc auth-context property holding it.
MTLS_FIELDS = {
    "uri": "peer_uri",  # a URI SAN, e.g. a SPIFFE id
    "dns": "peer_dns",  # a DNS SAN
    "cn": "x509_common_name",
}

AuthContext = Mapping[str, Iterable[bytes]]


def token_digest(token: str) -> str:
    """The SHA-256 hex digest of a gateway token: what the tokens file stores."""
    return hashlib.sha256(token.encode()).hexdigest()


def resolved_x_caller(x_caller: str, mode: str, budgets: bool) -> str:
    """`auto` made concrete: `name` for a sidecar without budgets, else `ignore`."""
    if x_caller != "auto":
        return x_caller
    return "name" if mode == "sidecar" and not budgets else "ignore"


@dataclass(frozen=True)
class Identified:
    """The outcome of identifying one call.

    `principal`: the authenticated name budgets use (unfakeable unless `x_caller` is
    `name`). `name`: the caller's name for metrics and logs (the principal, refined by
    `x-caller` when allowed). `refused`: the error the call fails with, when it proved no
    identity (the call is still logged under `name`)."""

    principal: str
    name: str
    refused: CallerUnauthenticated | None = None


@dataclass(frozen=True)
class IdentityPolicy:
    """How calls are identified (built from Settings by the composition root)."""

    mode: str = "sidecar"
    default_caller: str = "unknown"
    x_caller: str = "name"  # resolved: name, refine or ignore
    mtls_field: str = "uri"
    unauthenticated: str = "reject"


class Identifier:
    """Identifies calls by `policy`; `tokens()` gives the current digest -> caller table."""

    def __init__(
        self,
        policy: IdentityPolicy,
        tokens: Callable[[], Mapping[str, str]] | None = None,
    ) -> None:
        if policy.mode not in MODES:
            raise ValueError(f"unknown identity mode {policy.mode!r}")
        if policy.x_caller not in ("name", "refine", "ignore"):
            raise ValueError(f"unresolved x-caller mode {policy.x_caller!r}")
        if policy.mode == "token" and tokens is None:
            raise ValueError("token identity needs a tokens table")
        self.policy = policy
        self._tokens = tokens

    @property
    def reads_only_metadata(self) -> bool:
        """Whether `__call__` is a function of the metadata alone (sidecar mode: mTLS reads
        the auth context, token mode a table that can change)."""
        return self.policy.mode == "sidecar"

    @property
    def needs_auth_context(self) -> bool:
        """Whether `__call__` reads the auth context (only mTLS does: building it costs
        every call a dict from grpc's C core)."""
        return self.policy.mode == "mtls"

    def __call__(self, metadata: Mapping[str, str], auth_context: AuthContext) -> Identified:
        policy = self.policy
        x_caller = sanitize_label(metadata.get("x-caller")) or None
        if policy.mode == "sidecar":
            proven: str | None = policy.default_caller
            if policy.x_caller == "name" and x_caller:
                return Identified(principal=x_caller, name=x_caller)
        elif policy.mode == "mtls":
            proven = _certificate_name(auth_context, policy.mtls_field)
        else:
            proven = self._token_caller(metadata)
        refused = None
        if proven is None:
            why = (
                "the call proves no caller identity: "
                + (
                    "its client certificate has no usable name"
                    if policy.mode == "mtls"
                    else "it carries no known `authorization: Bearer <gateway token>`"
                )
                + "; nothing was sent to Stablecog"
            )
            if policy.unauthenticated == "reject":
                refused = CallerUnauthenticated(why)
            proven = policy.default_caller
        name = proven
        if policy.x_caller == "refine" and x_caller and refused is None:
            name = sanitize_label(f"{proven}:{x_caller}")
        return Identified(principal=proven, name=name, refused=refused)

    def _token_caller(self, metadata: Mapping[str, str]) -> str | None:
        assert self._tokens is not None
        token = metadata.get("authorization", "").strip()
        if token[:7].lower() != "bearer ":
            return None
        token = token[7:].strip()
        if not token:
            return None
        return self._tokens().get(token_digest(token))


def _certificate_name(auth_context: AuthContext, field: str) -> str | None:
    """The caller's name from its verified client certificate, or None (grpc fills the
    peer properties only from a certificate the listener's client CA verified)."""
    if b"ssl" not in auth_context.get("transport_security_type", ()):
        return None
    for value in auth_context.get(MTLS_FIELDS[field], ()):
        name = distinct_label(value.decode("utf-8", errors="replace"))
        if name:
            return name
    return None


_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def parse_tokens(text: str) -> dict[str, str]:
    """The tokens file (`caller: <sha256 hex>` or `caller: [<digest>, ...]`, YAML) as a
    digest -> caller table; ValueError saying what is wrong."""
    import yaml  # only with a tokens file (~10 ms of start-up otherwise)

    from gateway import strict_yaml

    try:
        document = strict_yaml.load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"not YAML: {exc}") from None
    if not isinstance(document, dict):
        raise ValueError("expected a mapping of caller names to token digests")
    table: dict[str, str] = {}
    for caller, digests in document.items():
        name = sanitize_label(str(caller))
        if not name or name != str(caller):
            raise ValueError(f"caller {str(caller)[:63]!r} is not a name of [A-Za-z0-9_.:-]")
        for digest in digests if isinstance(digests, list) else [digests]:
            if not isinstance(digest, str) or not _DIGEST.match(digest):
                raise ValueError(
                    f"caller {name}: expected the SHA-256 hex digest of its token (64 "
                    "lowercase hex digits), never the token itself"
                )
            if table.setdefault(digest, name) != name:
                raise ValueError(f"one token digest is listed for {table[digest]} and {name}")
    return table
