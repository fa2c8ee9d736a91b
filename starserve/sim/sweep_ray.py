"""The one place the simulator touches Ray: sweep points as Ray tasks, with a progress bar."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from starserve.sim.config import Scenario
from starserve.sim.sweep import SweepPoint, run_point
from starserve.workload import WorkloadRequest


def run_sweep_on_ray(
    scenario: Scenario,
    points: Sequence[SweepPoint],
    base: Sequence[WorkloadRequest] | None,
    ray_address: str | None = None,
) -> list[dict[str, Any]]:
    """Run every point as a Ray task (local Ray unless `ray_address`); rows in point order."""
    import ray
    from tqdm import tqdm

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=ray_address, include_dashboard=False, log_to_driver=False)
    try:
        task = ray.remote(num_cpus=1)(run_point)
        scenario_ref = ray.put(scenario)
        base_ref = cast(Any, ray.put(list(base) if base is not None else None))
        pending = {task.remote(scenario_ref, point, base_ref): i for i, point in enumerate(points)}
        rows: list[dict[str, Any] | None] = [None] * len(points)
        with tqdm(total=len(points), desc="sweep", unit="sim") as bar:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    rows[pending.pop(ref)] = ray.get(ref)
                    bar.update(1)
        return [row for row in rows if row is not None]
    finally:
        if started_here:
            ray.shutdown()
