"""A simulated prefill instance: FCFS chunked prefill under a per-iteration token budget."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from starserve.sim.latency import LatencyModel
from starserve.sim.request import RequestStatus, SimRequest


@dataclass(slots=True)
class PrefillInstance:
    instance_id: int
    latency: LatencyModel
    token_budget: int
    queue: deque[SimRequest] = field(default_factory=deque)
    busy: bool = False
    num_queued_tokens: int = 0
    _in_flight: list[tuple[SimRequest, int]] = field(default_factory=list)

    def enqueue(self, request: SimRequest) -> None:
        self.queue.append(request)
        self.num_queued_tokens += request.num_prompt_tokens

    def start_iteration(self, now_s: float) -> float | None:
        """Schedule the next chunks (head of queue first); the iteration's end time or None."""
        if self.busy or not self.queue:
            return None
        budget = self.token_budget
        chunks = []
        for request in self.queue:
            if budget <= 0:
                break
            new = min(budget, request.num_prompt_tokens - request.num_prefilled_tokens)
            chunks.append((new, request.num_prefilled_tokens))
            self._in_flight.append((request, new))
            request.status = RequestStatus.PREFILLING
            budget -= new
        self.busy = True
        return now_s + self.latency.prefill_s(chunks)

    def finish_iteration(self, now_s: float) -> list[SimRequest]:
        """Commit the iteration; requests whose whole prompt is done produce token 1 now."""
        done = []
        for request, new in self._in_flight:
            request.num_prefilled_tokens += new
            self.num_queued_tokens -= new
            if request.num_prefilled_tokens >= request.num_prompt_tokens:
                request.first_token_time_s = now_s
                request.num_generated = 1
                done.append(request)
        self._in_flight.clear()
        for request in done:
            self.queue.remove(request)
        self.busy = False
        return done
