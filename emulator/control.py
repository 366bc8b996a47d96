"""The `/_emulator/` control API: JSON, no auth, for tests driving the emulator from elsewhere.

GET    /_emulator/requests                 {"generation_count": n, "requests": [record, ...]}
POST   /_emulator/reset                    clear records, faults, rate counts; restore balances
                                           and the startup settings
POST   /_emulator/accounts                 {"token": "sc-...", "credits": 100} -> account
GET    /_emulator/accounts/<token_sha256>  {"token_sha256", "user_id", "balance",
                                           "initial_credits"}; 404 if unknown
GET    /_emulator/faults                   {"pending": [{"mode", "count", ...params}]}
POST   /_emulator/faults                   {"mode": "worker_failure", "count": 1, ...params}
DELETE /_emulator/faults                   drop all pending faults
GET    /_emulator/config                   the runtime-adjustable settings
POST   /_emulator/config                   {"latency_seconds": 0.2, ...} -> the new settings

Bad input gets 400 {"error": "<what is wrong>"}. Requests here are not recorded.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from emulator.state import STATE_KEY, EmulatorState


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        document = json.loads(await request.read() or b"{}")
    except ValueError as exc:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": f"invalid JSON: {exc}"}), content_type="application/json"
        ) from None
    if not isinstance(document, dict):
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "expected a JSON object"}), content_type="application/json"
        )
    return document


def _state(request: web.Request) -> EmulatorState:
    return request.app[STATE_KEY]


async def get_requests(request: web.Request) -> web.StreamResponse:
    """Recorded requests, oldest first, and the number of charged generations."""
    state = _state(request)
    return web.json_response(
        {
            "generation_count": state.generation_count,
            "requests": [r.to_dict() for r in state.records()],
        }
    )


async def post_reset(request: web.Request) -> web.StreamResponse:
    """Back to a clean slate (accounts are kept, with their starting balances)."""
    _state(request).reset()
    return web.json_response({"ok": True})


async def post_account(request: web.Request) -> web.StreamResponse:
    """Create or reset an account."""
    state = _state(request)
    body = await _json_object(request)
    token, credits = body.get("token"), body.get("credits", state.config.initial_credits)
    if not isinstance(token, str) or not token:
        return _error(400, "token must be a non-empty string")
    if isinstance(credits, bool) or not isinstance(credits, int) or credits < 0:
        return _error(400, "credits must be an integer >= 0")
    return web.json_response(_account_view(state, state.add_account(token, credits).token_sha256))


def _account_view(state: EmulatorState, digest: str) -> dict[str, Any]:
    account = state.ledger.get(digest)
    assert account is not None
    return {
        "token_sha256": account.token_sha256,
        "user_id": str(account.user_id),
        "balance": account.balance,
        "initial_credits": account.initial_credits,
    }


async def get_account(request: web.Request) -> web.StreamResponse:
    """An account's balance, by token SHA-256."""
    state = _state(request)
    digest = request.match_info["digest"].lower()
    if state.ledger.get(digest) is None:
        return _error(404, "unknown account")
    return web.json_response(_account_view(state, digest))


async def get_faults(request: web.Request) -> web.StreamResponse:
    """Pending faults."""
    return web.json_response({"pending": _state(request).faults.pending()})


async def post_fault(request: web.Request) -> web.StreamResponse:
    """Queue a fault for the next `count` generation requests."""
    state = _state(request)
    body = await _json_object(request)
    mode, count = body.pop("mode", None), body.pop("count", 1)
    if not isinstance(mode, str):
        return _error(400, "mode must be a string")
    try:
        state.faults.inject(mode, count, **body)
    except ValueError as exc:
        return _error(400, str(exc))
    return web.json_response({"pending": state.faults.pending()})


async def delete_faults(request: web.Request) -> web.StreamResponse:
    """Drop every pending fault."""
    _state(request).faults.clear()
    return web.json_response({"pending": []})


async def get_config(request: web.Request) -> web.StreamResponse:
    """Runtime-adjustable settings."""
    return web.json_response(_state(request).config.runtime_dict())


async def post_config(request: web.Request) -> web.StreamResponse:
    """Change runtime-adjustable settings, e.g. {"latency_seconds": 0.2}."""
    state = _state(request)
    body = await _json_object(request)
    try:
        config = state.configure(body)
    except (ValueError, TypeError) as exc:
        return _error(400, str(exc))
    return web.json_response(config.runtime_dict())


def add_routes(app: web.Application) -> None:
    """Mount the control API under /_emulator/."""
    app.router.add_get("/_emulator/requests", get_requests)
    app.router.add_post("/_emulator/reset", post_reset)
    app.router.add_post("/_emulator/accounts", post_account)
    app.router.add_get("/_emulator/accounts/{digest}", get_account)
    app.router.add_get("/_emulator/faults", get_faults)
    app.router.add_post("/_emulator/faults", post_fault)
    app.router.add_delete("/_emulator/faults", delete_faults)
    app.router.add_get("/_emulator/config", get_config)
    app.router.add_post("/_emulator/config", post_config)
