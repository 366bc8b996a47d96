"""GetBudget: the calling service's own budget, as gateway.budgets keeps it.

The caller is the call's identity (gateway.identity), never a request field, so a service
can read only its own budget. Without a budget policy every caller is permitted without
limits. Costs nothing; never reaches the upstream.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway._gen.stablecog.v1 import generation_pb2
from gateway.call import Call, CallReport
from gateway.call_runner import Answer

if TYPE_CHECKING:
    from gateway.budgets import Budgets


async def get_budget(
    budgets: Budgets | None,
    request: generation_pb2.GetBudgetRequest,
    call: Call,
    report: CallReport,
) -> Answer:
    caller = call.principal or call.caller
    response = generation_pb2.GetBudgetResponse(caller=caller, permitted=True)
    if budgets is None:
        return Answer(response)
    status = await budgets.status(caller)
    response.shared = status.shared
    if status.limits is None:
        response.permitted = False
        return Answer(response)
    if status.limits.max_in_flight is not None:
        response.max_in_flight = status.limits.max_in_flight
    response.in_flight = status.in_flight
    for use in status.windows:
        window = response.windows.add(
            window=use.window,
            limit=use.limit,
            spent=use.spent,
            reserved=use.reserved,
            remaining=max(use.limit - use.spent - use.reserved, 0),
        )
        window.resets_at.FromNanoseconds(int(use.resets_at * 1e9))
    return Answer(response)
