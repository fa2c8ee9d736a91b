"""The start-up check of an engine: one real step before the instance is reported ready.

An engine that loads but cannot compute (a library path this CPU lacks, a device that is not
there, a kernel that fails) must stop start-up with the reason, not answer its first request
with an error while `/health` says ok. The warm-up prefills and samples a one-token request
through the very code every request takes (model, paged attention, native kernels, packing,
sampler) and leaves nothing behind: no live request, every block free.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from starserve.engine.params import SamplingParams

if TYPE_CHECKING:
    from starserve.engine.engine import Engine

WARM_UP_REQUEST_ID = "starserve-warm-up"


class EngineStartupError(RuntimeError):
    """The engine could not run its warm-up step; the message says why (one line)."""


def warm_up(engine: Engine) -> float:
    """Run one real engine step (prefill + sample of a 2-token prompt, then one decode step);
    returns its wall time in seconds. Raises `EngineStartupError` with the cause when the engine
    cannot step. Call before the engine serves anything (it steps whatever else is queued)."""
    start = time.perf_counter()
    params = SamplingParams(max_tokens=2, temperature=0, ignore_eos=True)
    prompt = [engine.weights.config.eos_token_ids[0]] * 2
    try:
        engine.add_request(WARM_UP_REQUEST_ID, prompt, params)
        while WARM_UP_REQUEST_ID in engine.seqs:
            engine.step()
    except Exception as err:
        if WARM_UP_REQUEST_ID in engine.seqs:
            engine.abort_request(WARM_UP_REQUEST_ID)
            engine.step()  # reports (and drops) the abort
        detail = str(err).splitlines()[0] if str(err) else ""
        raise EngineStartupError(
            f"the engine cannot run a step ({type(err).__name__}: {detail})"
        ) from err
    return time.perf_counter() - start
