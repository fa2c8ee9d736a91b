"""A simulated decode instance: vLLM-style continuous batching over paged KV blocks.

Shape of a step (nano-vllm's): schedule (admit waiting requests if `can_allocate`, preempt the
newest running request by recompute when the next iteration cannot grow every sequence) ->
run (a chunk of identical-batch iterations in closed form, see chunk.py) -> postprocess
(finished requests leave). KV accounting counts each sequence's partly filled last block as
full: used blocks = ceil(K / block_size) + B + reserved, an upper bound of vLLM's per-sequence
block tables, kept in O(1) from the running aggregates K (KV tokens) and B (sequences).
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field

from starserve.sim.chunk import Chunk
from starserve.sim.latency import LatencyModel
from starserve.sim.request import DecodeInterval, RequestStatus, SimRequest


@dataclass(slots=True)
class DecodeCounters:
    num_preemptions: int = 0
    num_kv_exhaustion_events: int = 0
    num_recompute_tokens: int = 0


@dataclass(slots=True)
class DecodeInstance:
    instance_id: int
    latency: LatencyModel
    num_total_blocks: int
    block_size: int
    max_num_seqs: int
    watermark_blocks: int
    running: dict[str, SimRequest] = field(default_factory=dict)
    waiting: deque[SimRequest] = field(default_factory=deque)
    transferring: dict[str, SimRequest] = field(default_factory=dict)  # P->D KV in flight
    # migrations into this instance: the request and its context as of the last stage sent
    importing: dict[str, tuple[SimRequest, int]] = field(default_factory=dict)
    steps_done: int = 0
    num_kv_tokens: int = 0  # K: context tokens of the running sequences
    num_reserved_blocks: int = 0  # incoming P->D transfers and migrations
    num_incoming: int = 0  # sequences those reservations belong to
    clock_s: float = 0.0  # the instance is between iterations at this time (or idle)
    chunk: Chunk | None = None
    version: int = 0  # bumps whenever the chunk in flight is cut short
    chunk_log: list[Chunk] = field(default_factory=list)  # every chunk started, in order
    counters: DecodeCounters = field(default_factory=DecodeCounters)
    _finish_heap: list[tuple[int, int, int, SimRequest]] = field(default_factory=list)
    _heap_seq: int = 0
    _fixed_cache: dict[int, float] = field(default_factory=dict)
    _s_per_kv_token: float = field(init=False)  # the latency model's g, read once

    def __post_init__(self) -> None:
        self._s_per_kv_token = self.latency.decode_s_per_kv_token

    # ---- KV accounting (query/commit pairs) -------------------------------------------
    @property
    def num_used_blocks(self) -> int:
        running = -(-self.num_kv_tokens // self.block_size) + len(self.running)
        return running + self.num_reserved_blocks

    @property
    def num_free_blocks(self) -> int:
        return self.num_total_blocks - self.num_used_blocks

    def blocks_for(self, num_tokens: int) -> int:
        """Blocks a sequence with `num_tokens` context takes, as this accounting counts them."""
        return -(-num_tokens // self.block_size) + 1

    def can_reserve(self, num_blocks: int, num_sequences: int = 1) -> bool:
        seats = len(self.running) + self.num_incoming + num_sequences <= self.max_num_seqs
        return seats and num_blocks <= self.num_free_blocks - self.watermark_blocks

    def reserve(self, num_blocks: int, num_sequences: int = 1) -> None:
        self.num_reserved_blocks += num_blocks
        self.num_incoming += num_sequences

    def release(self, num_blocks: int, num_sequences: int = 1) -> None:
        self.num_reserved_blocks -= num_blocks
        self.num_incoming -= num_sequences
        assert self.num_reserved_blocks >= 0 and self.num_incoming >= 0

    # ---- batch membership ---------------------------------------------------------------
    def join(self, request: SimRequest, by_arrival: bool = False) -> None:
        """Add a request (KV present) to the batch at the current step boundary: last, or
        (`by_arrival`: a migrated request, as the engine's `commit_import`) before the first
        running request that arrived later, so preemption (newest first) sees its age."""
        request.status = RequestStatus.RUNNING
        request.instance_id = self.instance_id
        request.join_step = self.steps_done
        request.generated_at_join = request.num_generated
        request.heap_epoch += 1
        self.running[request.request_id] = request
        if by_arrival:
            self._order_by_arrival(request)
        self.num_kv_tokens += request.num_prompt_tokens + request.num_generated
        self._heap_seq += 1
        entry = (request.finish_step(), self._heap_seq, request.heap_epoch, request)
        heapq.heappush(self._finish_heap, entry)

    def _order_by_arrival(self, request: SimRequest) -> None:
        """Put `request` (just joined, last) before the first running request that arrived
        after it, as the engine's `Scheduler.add_running(by_arrival=True)` does."""
        others = list(self.running.values())[:-1]
        arrival = request.arrival_time_s
        first_later = next(
            (i for i, r in enumerate(others) if r.arrival_time_s > arrival), len(others)
        )
        for moved in others[first_later:]:  # behind it, in their order
            del self.running[moved.request_id]
            self.running[moved.request_id] = moved

    def leave(self, request: SimRequest) -> None:
        """Remove a running request at the current step boundary, committing its tokens."""
        del self.running[request.request_id]
        request.num_generated = request.generated_at(self.steps_done)
        self.num_kv_tokens -= request.num_prompt_tokens + request.num_generated
        if self.steps_done > request.join_step:
            request.intervals.append(
                DecodeInterval(self.instance_id, request.join_step + 1, self.steps_done)
            )
        request.heap_epoch += 1

    # ---- time -------------------------------------------------------------------------
    def sync(self, now_s: float) -> list[SimRequest]:
        """Stop the chunk in flight at the first step boundary at or after `now_s`; return
        the requests that finished by then (already removed)."""
        chunk = self.chunk
        if chunk is None:
            self.clock_s = max(self.clock_s, now_s)
            return []
        steps = chunk.boundary_after(now_s)
        self._commit(chunk, steps)
        return self._pop_finished()

    def on_chunk_end(self, version: int) -> list[SimRequest] | None:
        """The chunk's last iteration ended; None if the event is stale."""
        chunk = self.chunk
        if chunk is None or version != self.version:
            return None
        self._commit(chunk, chunk.num_steps)
        return self._pop_finished()

    def _commit(self, chunk: Chunk, steps: int) -> None:
        self.steps_done = chunk.first_step + steps
        self.num_kv_tokens += steps * len(self.running)
        self.clock_s = chunk.end_time_s(steps)
        self.chunk = None
        self.version += 1

    def _pop_finished(self) -> list[SimRequest]:
        finished = []
        heap = self._finish_heap
        while heap and heap[0][0] <= self.steps_done:
            _, _, epoch, request = heapq.heappop(heap)
            if epoch == request.heap_epoch and request.instance_id == self.instance_id:
                self.leave(request)
                request.status = RequestStatus.FINISHED
                request.finish_time_s = self.clock_s
                finished.append(request)
        return finished

    def _next_finish_in(self) -> int:
        heap = self._finish_heap
        while heap:
            step, _, epoch, request = heap[0]
            if epoch == request.heap_epoch and request.instance_id == self.instance_id:
                return step - self.steps_done
            heapq.heappop(heap)
        raise RuntimeError("running requests but no finish step")

    def _steps_until_full(self) -> int:
        """Iterations possible before the KV blocks run out (each adds B tokens)."""
        batch = len(self.running)
        capacity_tokens = (
            self.num_total_blocks - batch - self.num_reserved_blocks
        ) * self.block_size
        return (capacity_tokens - self.num_kv_tokens) // batch

    def _fixed_s(self, batch: int) -> float:
        cached = self._fixed_cache.get(batch)
        if cached is None:
            cached = self._fixed_cache[batch] = self.latency.decode_fixed_s(batch)
        return cached

    # ---- schedule -> run ------------------------------------------------------------
    def admit_waiting(self) -> list[SimRequest]:
        """FCFS admission; recomputed requests rejoin after a prefill stall, others start
        their KV transfer (returned, with blocks reserved)."""
        transfers = []
        while self.waiting:
            request = self.waiting[0]
            blocks = self.blocks_for(request.num_prompt_tokens + request.num_generated)
            if not self.can_reserve(blocks):
                break
            self.waiting.popleft()
            if request.needs_recompute:
                tokens = request.num_prompt_tokens + request.num_generated
                self.clock_s += self.latency.prefill_s([(tokens, 0)])
                self.counters.num_recompute_tokens += tokens
                request.needs_recompute = False
                self.join(request)
            else:
                self.reserve(blocks)
                request.status = RequestStatus.TRANSFERRING
                self.transferring[request.request_id] = request
                transfers.append(request)
        return transfers

    def preempt_until_fits(self) -> int:
        """vLLM's recompute preemption: drop the newest sequence's KV until one more
        iteration fits. Returns the iterations that fit (>= 1) once it does."""
        steps_until_full = self._steps_until_full()
        if steps_until_full >= 1:
            return steps_until_full
        self.counters.num_kv_exhaustion_events += 1
        while len(self.running) > 1 and steps_until_full < 1:
            victim = next(reversed(self.running.values()))
            self.leave(victim)
            victim.status = RequestStatus.DECODE_WAITING
            victim.needs_recompute = True
            victim.was_preempted = True
            victim.num_preemptions += 1
            self.counters.num_preemptions += 1
            self.waiting.appendleft(victim)
            steps_until_full = self._steps_until_full()
        if steps_until_full < 1:
            raise RuntimeError(f"instance {self.instance_id}: one sequence exceeds the KV capacity")
        return steps_until_full

    def start_chunk(self) -> float | None:
        """Run the batch until its next change; the chunk's end time (None when idle)."""
        if not self.running:
            return None
        steps_until_full = self.preempt_until_fits()
        batch = len(self.running)
        steps = min(self._next_finish_in(), steps_until_full)
        g = self._s_per_kv_token
        # positional: first_step, start_time_s, fixed_s, kv_first_s, kv_growth_s, num_steps
        chunk = Chunk(
            self.steps_done,
            self.clock_s,
            self._fixed_s(batch),
            g * self.num_kv_tokens,
            g * batch,
            steps,
        )
        self.chunk = chunk
        self.chunk_log.append(chunk)  # chunks never change once started
        return chunk.end_time_s(steps)

    def steps_done_at(self, now_s: float) -> int:
        """Completed steps at `now_s`, counting the chunk in flight (read-only)."""
        chunk = self.chunk
        if chunk is None:
            return self.steps_done
        return chunk.first_step + chunk.steps_done_by(now_s)

    def num_used_blocks_at(self, now_s: float) -> int:
        return self.num_used_blocks_after(self.steps_done_at(now_s))

    def num_used_blocks_after(self, steps_done: int) -> int:
        """Used blocks once `steps_done` steps (of the chunk in flight) have completed."""
        grown = (steps_done - self.steps_done) * len(self.running)
        tokens = self.num_kv_tokens + grown
        return -(-tokens // self.block_size) + len(self.running) + self.num_reserved_blocks

    @property
    def num_preempted_waiting(self) -> int:
        return sum(1 for r in self.waiting if r.needs_recompute)

    def waiting_blocks(self) -> int:
        return sum(self.blocks_for(r.num_prompt_tokens + r.num_generated) for r in self.waiting)
