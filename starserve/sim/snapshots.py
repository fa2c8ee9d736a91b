"""Frozen policy snapshots of simulated decode instances, with simulated predictions.

Snapshots are read-only views at a time inside a chunk in flight (no chunk is cut short to
take one), exactly what the Ray controller gets from polling real engines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from starserve.mechanism.snapshot import WaitingRequest, aggregate_snapshot, build_snapshot
from starserve.policy import InstanceSnapshot, NewRequest, PredictorKind, RequestLoad
from starserve.sim.decode import DecodeInstance
from starserve.sim.predictor import LogRatioSampler
from starserve.sim.request import SimRequest


@dataclass(slots=True)
class SimPredictor:
    """Fills `predicted_remaining_tokens` as the policy's predictor kind says."""

    kind: PredictorKind
    sampler: LogRatioSampler
    rng: np.random.Generator

    def remaining(self, request: SimRequest, num_generated: int) -> float | None:
        kind = self.kind
        if kind == "none":
            return None
        true_remaining = request.num_output_tokens - num_generated
        if kind == "oracle":
            return float(true_remaining)
        if not request.ratio_from_generated <= num_generated < request.ratio_until_generated:
            self._observe(request, num_generated)
        # predicted_from_log_ratio with exp(r) cached on the request (max(0.0, .) spelled out)
        predicted = (true_remaining + 1.0) * request.ratio_factor - 1.0
        return predicted if predicted > 0.0 else 0.0

    def remaining_as_is(self, request: SimRequest, num_generated: int) -> float | None:
        """The request's current prediction, aged to `num_generated` without a new draw (what
        a migration destination holds: the prediction the last stage carried)."""
        if self.kind == "none":
            return None
        true_remaining = request.num_output_tokens - num_generated
        if self.kind == "oracle":
            return float(true_remaining)
        predicted = (true_remaining + 1.0) * request.ratio_factor - 1.0
        return predicted if predicted > 0.0 else 0.0

    def _observe(self, request: SimRequest, num_generated: int) -> None:
        """Draw a new log ratio if the request's progress bucket changed, and note the
        generated counts over which the bucket stays (polls inside them skip this)."""
        num_output = max(1, request.num_output_tokens)
        bucket = self.sampler.bucket(num_generated / num_output)
        if bucket != request.ratio_bucket:
            request.log_ratio = self.sampler.sample(num_generated / num_output, self.rng)
            request.ratio_factor = math.exp(request.log_ratio)
            request.ratio_bucket = bucket
        request.ratio_from_generated = num_generated
        request.ratio_until_generated = self._bucket_end(num_generated, num_output, bucket)

    def _bucket_end(self, num_generated: int, num_output: int, bucket: int) -> int:
        """The fewest generated tokens past `num_generated` (up to `num_output + 1`) whose
        progress falls in another bucket; buckets never decrease as progress grows."""
        if self.sampler.bucket(num_output / num_output) == bucket:
            return num_output + 1
        same, other = num_generated, num_output  # bucket(same) == bucket != bucket(other)
        while other - same > 1:
            middle = (same + other) // 2
            if self.sampler.bucket(middle / num_output) == bucket:
                same = middle
            else:
                other = middle
        return other

    def new_request(self, request: SimRequest) -> NewRequest:
        """What dispatch sees of a request whose prefill produced its first token."""
        remaining = self.remaining(request, request.num_generated)
        return NewRequest(
            request_id=request.request_id,
            num_prompt_tokens=request.num_prompt_tokens + request.num_generated,
            predicted_output_tokens=None if remaining is None else remaining,
        )


def _load(request: SimRequest, generated: int, predictor: SimPredictor) -> RequestLoad:
    return RequestLoad(
        request.request_id,
        request.num_prompt_tokens + generated,
        generated,
        predictor.remaining(request, generated),
    )


def snapshot(
    instance: DecodeInstance, now_s: float, predictor: SimPredictor, is_migrating: bool
) -> InstanceSnapshot:
    """The instance's snapshot under the shared contract (`starserve.mechanism.snapshot`)."""
    steps = instance.steps_done_at(now_s)
    remaining = predictor.remaining
    loads = []
    for request in instance.running.values():
        generated = request.generated_at_join + (steps - request.join_step)  # generated_at
        loads.append(
            RequestLoad(
                request.request_id,
                request.num_prompt_tokens + generated,
                generated,
                remaining(request, generated),
            )
        )
    return build_snapshot(
        instance.instance_id,
        instance.block_size,
        instance.num_total_blocks,
        instance.num_total_blocks - instance.num_used_blocks_after(steps),
        tuple(loads),
        _waiting(instance, predictor) if instance.waiting else (),
        _in_transfer(instance, predictor) if instance.transferring or instance.importing else (),
        is_migrating,
    )


def _waiting(instance: DecodeInstance, predictor: SimPredictor) -> list[WaitingRequest]:
    return [
        WaitingRequest(
            _load(request, request.num_generated, predictor),
            instance.blocks_for(request.num_prompt_tokens + request.num_generated),
            request.needs_recompute,
        )
        for request in instance.waiting
    ]


def _in_transfer(instance: DecodeInstance, predictor: SimPredictor) -> list[RequestLoad]:
    """P->D transfers, then migrations into the instance (as of their last stage sent)."""
    loads = [
        _load(request, request.num_generated, predictor)
        for request in instance.transferring.values()
    ]
    for request, context in instance.importing.values():
        generated = context - request.num_prompt_tokens
        prediction = predictor.remaining_as_is(request, generated)
        loads.append(RequestLoad(request.request_id, context, generated, prediction))
    return loads


def observe(
    instance: DecodeInstance, now_s: float, predictor: SimPredictor, is_migrating: bool
) -> None:
    """Make exactly the predictor calls `snapshot` makes, building nothing: a light view
    taken in place of a full snapshot draws the same random predictions, in the same order."""
    if predictor.kind != "model":  # no random draws to keep in step
        return
    # `SimPredictor.remaining`'s own test, inlined: only a request that left its known
    # bucket range draws (or is re-checked)
    draw = predictor._observe
    del is_migrating  # `snapshot` lists a migrating instance's requests too (the contract)
    steps = instance.steps_done_at(now_s)
    for request in instance.running.values():
        generated = request.generated_at_join + (steps - request.join_step)
        if not request.ratio_from_generated <= generated < request.ratio_until_generated:
            draw(request, generated)
    for group in (instance.waiting, instance.transferring.values()):
        for request in group:
            generated = request.num_generated
            if not request.ratio_from_generated <= generated < request.ratio_until_generated:
                draw(request, generated)


def light_snapshot(instance: DecodeInstance, now_s: float) -> InstanceSnapshot:
    """Aggregates only (no per-request loads): for policies that read no more
    (`PolicySpec.reads`)."""
    return aggregate_snapshot(
        instance.instance_id,
        instance.block_size,
        instance.num_total_blocks,
        instance.num_total_blocks - instance.num_used_blocks_at(now_s),
        len(instance.waiting),
        instance.num_preempted_waiting if instance.waiting else 0,
        instance.waiting_blocks() if instance.waiting else 0,
    )
