"""A migrated request joins the simulated batch by arrival time, as the engine's
`commit_import` does (`tests/engine/test_migration.py`), so both drivers preempt the same one."""

from __future__ import annotations

from starserve.sim.build import latency_model
from starserve.sim.decode import DecodeInstance
from starserve.sim.request import SimRequest


def test_migrated_request_joins_before_the_first_later_arrival() -> None:
    instance = DecodeInstance(0, latency_model("llama3-8b", "h100", 1), 4096, 16, 64, 0)
    for name, arrival in [("a", 1.0), ("b", 5.0), ("c", 2.0)]:  # joined in this order
        instance.join(SimRequest(name, arrival, 10, 100))
    instance.join(SimRequest("x", 3.0, 10, 100), by_arrival=True)
    assert list(instance.running) == ["a", "x", "b", "c"]
    instance.join(SimRequest("y", 0.5, 10, 100))  # a prefill hand-off: last, whatever its age
    assert list(instance.running) == ["a", "x", "b", "c", "y"]
