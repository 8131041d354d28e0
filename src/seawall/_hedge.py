"""Hedged requests: one round of attempts in flight at once, the first good answer wins.

The engine runs a round in place of a single attempt when the policy has a
:class:`~seawall.Hedge` and the front end says the call may be hedged. The
first attempt starts at once; after the hedge delay without an answer, the
same request goes out again (to the next endpoint whose breaker admits it),
up to ``max_hedges`` times. A hedge never waits: with no free bulkhead slot,
or no retry budget left, it is skipped. The first attempt judged an ANSWER
wins; the others are cancelled (neutral to the breaker) and their responses
closed. When none answers, the round ends with the last attempt's outcome,
and the engine's retry loop goes on from there. The deadline bounds them all.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from ._config import Hedge
from ._decision import Act, Attempt, Call, Decision
from ._engine import FrontEnd, admit, run_attempt
from ._exceptions import SeawallError

if TYPE_CHECKING:
    from ._runtime import Runtime

__all__ = ["hedge_delay", "hedged_round"]

Outcome = tuple[Any, Exception | None, Decision]

#: Observations the p95 estimate needs before it replaces the fixed delay.
_WARM = 20


def hedge_delay(rt: Runtime, cfg: Hedge) -> float:
    """The wait before a hedge: fixed, or the recent p95 bounded by min and max."""
    latency = rt.latency
    if cfg.delay_from is None or latency is None or latency.count < _WARM:
        return cfg.delay
    p95 = latency.quantile()
    if p95 is None:
        return cfg.delay
    return min(cfg.max_delay, max(cfg.min_delay, p95))


async def hedged_round(
    fe: FrontEnd,
    call: Call,
    rt: Runtime,
    first: Attempt,
    deadline_at: float | None,
    cfg: Hedge,
) -> Outcome:
    """Run *first* and its hedges; the winner's outcome, or the last one's."""
    send, receive = anyio.create_memory_object_stream[tuple[Attempt, Outcome]](cfg.max_hedges + 1)
    scopes: dict[int, anyio.CancelScope] = {}
    winner: tuple[Attempt, Outcome] | None = None
    last: Outcome | None = None
    pending = 0

    async def run(attempt: Attempt) -> None:
        with scopes[attempt.index]:
            outcome = await run_attempt(fe, call, rt, attempt, deadline_at)
            send.send_nowait((attempt, outcome))

    async with send, receive:
        async with anyio.create_task_group() as tg:

            def launch(attempt: Attempt) -> None:
                nonlocal pending
                scopes[attempt.index] = anyio.CancelScope()
                pending += 1
                tg.start_soon(run, attempt)

            launch(first)
            hedges = 0
            delay = hedge_delay(rt, cfg)
            while pending:
                wait = delay if hedges < cfg.max_hedges else math.inf
                with anyio.move_on_after(wait):
                    attempt, outcome = await receive.receive()
                    pending -= 1
                    if outcome[2].act is Act.ANSWER:
                        winner = (attempt, outcome)
                        break
                    last = outcome
                    continue
                # No answer within the delay: a hedge, if one may go.
                hedges += 1
                hedge = await admit(fe, call, rt, deadline_at, hedge=True)
                if isinstance(hedge, SeawallError):
                    hedges = cfg.max_hedges  # skipped, not queued; no more tries
                    continue
                if call.tel is not None:
                    call.tel.hedge_sent()
                launch(hedge)
            for scope in scopes.values():
                scope.cancel()
        # Losers that finished as the winner was picked: close what they got.
        while True:
            try:
                _, outcome = receive.receive_nowait()
            except anyio.WouldBlock:
                break
            if outcome[0] is not None:
                await fe.discard(outcome[0])
    if winner is not None:
        attempt, outcome = winner
        call.winner = attempt.index
        if attempt.hedge and call.tel is not None:
            call.tel.hedge_won()
        return outcome
    assert last is not None
    return last
