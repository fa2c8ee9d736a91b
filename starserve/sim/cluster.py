"""The discrete-event loop of a PD-disaggregated cluster (Vidur's shape: pop the earliest
event, set the clock, let its handler push follow-ups).

Data flows one way: arrivals -> prefill instances -> dispatch policy -> decode instances ->
finished requests. The rebalance policy runs every poll interval on snapshots; instances never
call upward. Idle time is skipped: nothing happens between events, and a decode instance's
run of identical iterations is one event (see chunk.py).
"""

from __future__ import annotations

import contextlib
import gc
import heapq
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from starserve.mechanism.placement import PrefillPlacer
from starserve.policy import InstanceSnapshot, PolicyRunner, PolicySpec
from starserve.sim.decode import DecodeInstance
from starserve.sim.migration import Migration, MigrationLink, MigrationStatus
from starserve.sim.prefill import PrefillInstance
from starserve.sim.request import RequestStatus, SimRequest
from starserve.sim.snapshots import SimPredictor, light_snapshot, observe, snapshot

# an event: (time, sequence number, handler, payload); the unique sequence number breaks time
# ties in push order (arrivals first, in request order) and keeps handlers out of comparisons
Event = tuple[float, int, Callable[[Any], None], object]


@contextlib.contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Pause Python's cycle collector: the event loop allocates several objects per event but
    builds no reference cycles (reference counting frees everything; checked: a collection
    after a 12k-request run finds nothing), so the collector's passes over the growing heap
    of requests and chunk logs (~10% of the run) find nothing either."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass(slots=True)
class MigrationStats:
    num_started: int = 0
    num_finished: int = 0
    num_aborted: int = 0
    num_aborted_by_destination: int = 0  # no room left on the destination
    num_bytes: int = 0


@dataclass(slots=True)
class Timeline:
    """Per-instance KV utilisation sampled every `interval_s`."""

    interval_s: float
    times_s: list[float] = field(default_factory=list)
    kv_utilization: list[list[float]] = field(default_factory=list)


@dataclass(slots=True)
class ClusterSim:
    policy: PolicySpec
    prefill: list[PrefillInstance]
    decode: list[DecodeInstance]
    predictor: SimPredictor
    link: MigrationLink
    transfer_s: Callable[[int], float]  # P->D KV transfer time for a context length
    poll_interval_s: float
    timeline: Timeline
    requests: list[SimRequest]
    # passive listener called after every event (tests check invariants with it)
    on_event: Callable[[ClusterSim], None] | None = None
    placer: PrefillPlacer = field(default_factory=PrefillPlacer.named)
    runner: PolicyRunner = field(init=False)
    now_s: float = 0.0
    migrations: MigrationStats = field(default_factory=MigrationStats)
    _events: list[Event] = field(default_factory=list)
    _seq: Iterator[int] = field(default_factory=itertools.count)
    _arrivals: Iterator[tuple[int, SimRequest]] = field(default_factory=lambda: iter(()))
    _migrating: set[int] = field(default_factory=set)
    _num_finished: int = 0
    # a pressure-gated policy gets light views (aggregates) while its gate is shut; True
    # builds full snapshots in their place (the same results, slower: tests check it)
    full_views: bool = False
    _dispatch_cache: dict[int, InstanceSnapshot] = field(default_factory=dict)
    _view_ids: set[int] = field(default_factory=set)  # cache entries that are views only
    _dispatch_cache_time_s: float = -1.0
    _blind_snapshots: tuple[InstanceSnapshot, ...] | None = None  # load-blind dispatch's view

    def __post_init__(self) -> None:
        self.runner = self.policy.bind()

    def _push(self, time_s: float, handler: Callable[[Any], None], payload: object) -> None:
        heapq.heappush(self._events, (time_s, next(self._seq), handler, payload))

    def run(self) -> None:
        """Simulate until every request has finished."""
        # arrivals take sequence numbers 0..N-1 (request order) but enter the heap one at a
        # time, just before they are due, which keeps the heap small
        arrivals = sorted(enumerate(self.requests), key=lambda a: (a[1].arrival_time_s, a[0]))
        self._arrivals = iter(arrivals)
        self._seq = itertools.count(len(self.requests))
        self._push_next_arrival()
        if self.policy.migrates:
            self._push(self._rebalance_interval_s(), self._on_poll, None)
        self._push(0.0, self._on_timeline, None)
        with _cyclic_gc_paused():
            self._loop()
        unfinished = len(self.requests) - self._num_finished
        if unfinished:
            raise RuntimeError(f"simulation ended with {unfinished} unfinished requests")

    def _loop(self) -> None:
        events = self._events
        pop = heapq.heappop
        on_event = self.on_event
        while events:
            time_s, _, handler, payload = pop(events)
            self.now_s = time_s
            handler(payload)
            if on_event is not None:
                on_event(self)

    def _push_next_arrival(self) -> None:
        arrival = next(self._arrivals, None)
        if arrival is not None:
            seq, request = arrival
            heapq.heappush(self._events, (request.arrival_time_s, seq, self._on_arrival, request))

    # ---- request flow ------------------------------------------------------------------
    def _on_arrival(self, request: SimRequest) -> None:
        self._push_next_arrival()
        target = self.prefill[self.placer.choose([i.num_queued_tokens for i in self.prefill])]
        target.enqueue(request)
        self._start_prefill(target)

    def _start_prefill(self, instance: PrefillInstance) -> None:
        end_s = instance.start_iteration(self.now_s)
        if end_s is not None:
            self._push(end_s, self._on_prefill_end, instance)

    def _on_prefill_end(self, instance: PrefillInstance) -> None:
        for request in instance.finish_iteration(self.now_s):
            if request.num_generated >= request.num_output_tokens:
                self._finish([request], self.now_s)
            else:
                self._dispatch(request)
        self._start_prefill(instance)

    def _dispatch(self, request: SimRequest) -> None:
        snapshots = self._dispatch_snapshots()
        instance_id = self.runner.dispatch(snapshots, self.predictor.new_request(request))
        if self._blind_snapshots is None:
            self._dispatch_cache.pop(instance_id, None)  # the controller counts what it sent
        instance = self.decode[instance_id]
        request.status = RequestStatus.DECODE_WAITING
        request.instance_id = instance_id
        instance.waiting.append(request)
        self._kick(instance)

    def _dispatch_snapshots(self) -> Sequence[InstanceSnapshot]:
        """Snapshots at most one poll interval old, as a polling controller holds them."""
        reads = self.policy.reads  # what dispatch reads: build no more than that
        if reads == "nothing":
            if self._blind_snapshots is None:  # built once: nothing in it is read
                self._blind_snapshots = tuple(light_snapshot(i, self.now_s) for i in self.decode)
            return self._blind_snapshots
        if self.now_s - self._dispatch_cache_time_s > self.poll_interval_s:
            self._dispatch_cache.clear()
            self._view_ids.clear()
            self._dispatch_cache_time_s = self.now_s
        if self.policy.pressure_gate is not None:
            return self._gated_dispatch_snapshots(self.policy.pressure_gate)
        light = reads == "aggregates"
        cache = self._dispatch_cache
        for instance in self.decode:
            if instance.instance_id not in cache:
                cache[instance.instance_id] = (
                    light_snapshot(instance, self.now_s)
                    if light
                    else snapshot(
                        instance, self.now_s, self.predictor, self._is_migrating(instance)
                    )
                )
        return [cache[i.instance_id] for i in self.decode]

    def _view(self, instance: DecodeInstance) -> InstanceSnapshot:
        """What a gated policy reads while its gate is shut: aggregates, with the very
        predictor calls a full snapshot makes (so the random predictions stay the same)."""
        migrating = self._is_migrating(instance)
        if self.full_views:
            return snapshot(instance, self.now_s, self.predictor, migrating)
        observe(instance, self.now_s, self.predictor, migrating)
        return light_snapshot(instance, self.now_s)

    def _gated_dispatch_snapshots(
        self, gate: Callable[[Sequence[InstanceSnapshot]], bool]
    ) -> Sequence[InstanceSnapshot]:
        cache = self._dispatch_cache
        for instance in self.decode:
            if instance.instance_id not in cache:
                cache[instance.instance_id] = self._view(instance)
                self._view_ids.add(instance.instance_id)
        views = [cache[i.instance_id] for i in self.decode]
        if not gate(views):
            return views
        for instance in self.decode:  # the gate opened: views are taken again, in full
            if instance.instance_id in self._view_ids:
                migrating = self._is_migrating(instance)
                cache[instance.instance_id] = snapshot(
                    instance, self.now_s, self.predictor, migrating
                )
        self._view_ids.clear()
        return [cache[i.instance_id] for i in self.decode]

    def _kick(self, instance: DecodeInstance, mutate: Callable[[], None] | None = None) -> None:
        """Bring `instance` to a step boundary, apply `mutate`, admit, and run on."""
        self._finish(instance.sync(self.now_s), instance.clock_s)
        if mutate is not None:
            mutate()
        self._admit_and_run(instance)

    def _admit_and_run(self, instance: DecodeInstance) -> None:
        for request in instance.admit_waiting():
            context = request.num_prompt_tokens + request.num_generated
            self._push(instance.clock_s + self.transfer_s(context), self._on_transfer_end, request)
        end_s = instance.start_chunk()
        if end_s is not None:
            self._push(end_s, self._on_chunk_end, (instance, instance.version))

    def _on_transfer_end(self, request: SimRequest) -> None:
        instance = self.decode[request.instance_id]

        def arrive() -> None:
            del instance.transferring[request.request_id]
            instance.release(instance.blocks_for(request.num_prompt_tokens + request.num_generated))
            instance.join(request)

        self._kick(instance, arrive)

    def _on_chunk_end(self, payload: tuple[DecodeInstance, int]) -> None:
        instance, version = payload
        finished = instance.on_chunk_end(version)
        if finished is None:
            return
        self._finish(finished, instance.clock_s)
        self._admit_and_run(instance)

    def _finish(self, requests: list[SimRequest], time_s: float) -> None:
        for request in requests:
            request.status = RequestStatus.FINISHED
            request.finish_time_s = time_s
            self._num_finished += 1

    # ---- rebalancing -------------------------------------------------------------------
    def _is_migrating(self, instance: DecodeInstance) -> bool:
        return instance.instance_id in self._migrating

    def _rebalance_interval_s(self) -> float:
        return self.policy.rebalance_interval_s or self.poll_interval_s

    def _on_poll(self, _: object) -> None:
        if self._num_finished < len(self.requests):
            self._push(self.now_s + self._rebalance_interval_s(), self._on_poll, None)
        gate = self.policy.pressure_gate
        if gate is not None and not gate([self._view(i) for i in self.decode]):
            return  # the plan would be empty
        snapshots = [
            snapshot(i, self.now_s, self.predictor, self._is_migrating(i)) for i in self.decode
        ]
        for decision in self.runner.plan_migrations(snapshots):
            src = self.decode[decision.src_instance_id]
            dst = self.decode[decision.dst_instance_id]
            request = src.running.get(decision.request_id)
            if request is None or self._is_migrating(src) or self._is_migrating(dst):
                continue
            self._start_migration(Migration(request, src, dst, self.link))

    def _start_migration(self, migration: Migration) -> None:
        self.migrations.num_started += 1
        holder: list[float | None] = []
        self._kick(migration.src, lambda: holder.append(migration.start()))
        duration_s = holder[0]
        if duration_s is None:
            self._end_migration(migration)
            return
        self._migrating.update((migration.src.instance_id, migration.dst.instance_id))
        self.migrations.num_bytes += migration.num_copied_tokens * self.link.kv_bytes_per_token
        self._push(migration.src.clock_s + duration_s, self._on_stage_end, migration)

    def _on_stage_end(self, migration: Migration) -> None:
        if migration.is_final_stage:
            self._kick(migration.dst, migration.finish)
            self._end_migration(migration)
            return
        copied_before = migration.num_copied_tokens
        holder: list[float | None] = []
        self._kick(migration.src, lambda: holder.append(migration.on_stage_end()))
        duration_s = holder[0]
        if duration_s is None:
            self._end_migration(migration)
            return
        copied = migration.num_copied_tokens - copied_before
        self.migrations.num_bytes += copied * self.link.kv_bytes_per_token
        # stages start at the source's step boundary: the final one after its last token
        self._push(migration.src.clock_s + duration_s, self._on_stage_end, migration)

    def _end_migration(self, migration: Migration) -> None:
        self._migrating.discard(migration.src.instance_id)
        self._migrating.discard(migration.dst.instance_id)
        if migration.status is MigrationStatus.FINISHED:
            self.migrations.num_finished += 1
        else:
            self.migrations.num_aborted += 1
            if migration.status is MigrationStatus.ABORTED_DST:
                self.migrations.num_aborted_by_destination += 1

    def _on_timeline(self, _: object) -> None:
        if self._num_finished < len(self.requests):
            self._push(self.now_s + self.timeline.interval_s, self._on_timeline, None)
        self.timeline.times_s.append(self.now_s)
        self.timeline.kv_utilization.append(
            [i.num_used_blocks_at(self.now_s) / i.num_total_blocks for i in self.decode]
        )
