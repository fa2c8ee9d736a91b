"""Online refresh: labelled points from finished requests, refit, swap only on a win."""

import numpy as np
import torch
from predictor_synthetic import synthetic_dataset

from starserve.predictor.refresh import OnlineRefresher, RefreshConfig, is_held_back
from starserve.predictor.runtime import RemainingLengthPredictor
from starserve.predictor.star import StarArchitecture
from starserve.predictor.train import train_star
from starserve.predictor.training import FitConfig


def _predictor(ds) -> RemainingLengthPredictor:
    arch = StarArchitecture(ds.hidden_size, max_output_tokens=512, projection_dim=8, dropout=0.0)
    fast = FitConfig(max_epochs=15, batch_size=128, learning_rate=3e-3, patience_epochs=5)
    model, _ = train_star(ds.split("train"), ds.split("val"), fast, arch)
    return RemainingLengthPredictor(model, {"interval": 16})


def _serve(refresher: OnlineRefresher, ds, stretch: float) -> list[float]:
    """Feed every request's taps, then finish it `stretch` times longer than its states say."""
    errors = []
    for index, record in enumerate(ds.requests):
        rows = np.flatnonzero(ds.point_request == index)
        hidden = torch.from_numpy(ds.hidden_last[rows].astype(np.float32))
        generated = torch.from_numpy(ds.point_generated[rows].astype(np.int64))
        predicted = refresher.current.predict(hidden, generated)
        rid = f"{record.prompt_id}#{record.sample_index}"
        refresher.observe([rid] * len(rows), hidden, generated, predicted)
        length = int(record.num_output_tokens * stretch)
        errors += np.abs(predicted.numpy() - (length - generated.numpy())).tolist()
        refresher.finish(rid, length)
    return errors


def test_refit_on_a_shifted_workload_swaps_in_a_better_predictor() -> None:
    base = synthetic_dataset(num_prompts=40, cap=256)
    predictor = _predictor(base)
    config = RefreshConfig(min_new_requests=60, min_requests=60, background=False, max_epochs=20)
    refresher = OnlineRefresher(predictor, config)
    shifted = synthetic_dataset(num_prompts=60, cap=256, seed=0)  # same states, longer answers
    first = _serve(refresher, shifted.subset(np.arange(len(shifted.requests)) < 60), 1.8)
    assert refresher.outcomes, "a refit must have run"
    assert refresher.outcomes[0].swapped
    assert refresher.current is not predictor
    after = _serve(refresher, shifted.subset(np.arange(len(shifted.requests)) >= 60), 1.8)
    assert np.mean(after) < 0.8 * np.mean(first[: len(after)])
    live = refresher.live_mae()
    assert live is not None and live > 0
    # only the output layer was refitted (scope "head"); the rest is the served model's
    old, new = predictor.model.state_dict(), refresher.current.model.state_dict()
    assert torch.equal(old["net.0.weight"], new["net.0.weight"])
    assert not torch.equal(old["net.9.weight"], new["net.9.weight"])


def test_a_candidate_that_loses_on_the_held_back_slice_is_not_swapped() -> None:
    base = synthetic_dataset(num_prompts=40, cap=256)
    predictor = _predictor(base)
    config = RefreshConfig(min_new_requests=10**6, background=False, max_epochs=1,
                           learning_rate=0.5)  # fmt: skip
    refresher = OnlineRefresher(predictor, config)
    _serve(refresher, base.split("test"), 1.0)  # no shift; one wild epoch spoils the head
    outcome = refresher.refit()
    assert outcome is not None
    assert outcome.swapped == (outcome.candidate_mae < outcome.current_mae)
    if not outcome.swapped:
        assert refresher.current is predictor


def test_held_back_requests_are_a_stable_share() -> None:
    ids = [f"r{i}" for i in range(4000)]
    share = np.mean([is_held_back(rid, 0.25) for rid in ids])
    assert 0.22 < share < 0.28
    assert is_held_back("r7", 0.25) == is_held_back("r7", 0.25)


def test_background_refit_runs_in_a_thread_and_forget_drops_pending() -> None:
    base = synthetic_dataset(num_prompts=30, cap=256)
    refresher = OnlineRefresher(
        _predictor(base), RefreshConfig(min_new_requests=20, min_requests=20, max_epochs=3)
    )
    hidden = torch.zeros(1, base.hidden_size)
    refresher.observe(["gone"], hidden, torch.tensor([1]), torch.tensor([5.0]))
    refresher.forget("gone")
    refresher.finish("gone", 10)  # nothing pending: no label, no error
    assert refresher.live_mae() is None
    _serve(refresher, base, 1.5)
    refresher.wait(60)
    assert refresher.outcomes


def test_prediction_table_hook_labels_finished_requests_and_reports_live_mae() -> None:
    from dataclasses import dataclass

    from starserve.cluster.predictions import PredictionTable
    from starserve.predictor import load_predictor

    @dataclass
    class Out:  # the RequestOutput fields the table reads
        request_id: str
        hidden_last: torch.Tensor | None
        num_generated_tokens: int
        finish_reason: str | None = None

    predictor = load_predictor()
    assert PredictionTable(predictor).live_mae() is None  # off by default
    table = PredictionTable(predictor, refresh=True)
    assert table.refresher is not None
    state = torch.randn(predictor.hidden_size)
    table.observe([Out("a", state, 1), Out("b", state, 1)])
    served = table.remaining("a", 1)
    assert served is not None
    table.finish(Out("a", None, 40, "stop"))
    table.finish(Out("b", None, 40, "abort"))  # aborted: no label
    live = table.live_mae()
    assert live is not None and abs(live - abs(served - 39)) < 1e-3
    assert table.remaining("a", 40) is None


def test_prometheus_shows_the_live_mae_gauge_when_an_instance_reports_one() -> None:
    from starserve.cluster.controller import ClusterMetrics
    from starserve.cluster.types import InstancePoll
    from starserve.policy.types import InstanceSnapshot
    from starserve.server.metrics import ServerMetrics

    def poll(instance: int, live: float | None) -> InstancePoll:
        snap = InstanceSnapshot(instance, 16, 64, 60, 0, 0, ())
        return InstancePoll(snap, 0, 0, 0, predictor_live_mae_tokens=live)

    latest = ClusterMetrics((poll(0, None), poll(1, 42.5)), (0,), (1,), 0, {}, ())
    text = ServerMetrics().render(latest).decode()
    name = "starserve_instance_predictor_live_mae_tokens"
    assert f'{name}{{instance="1",role="decode"}} 42.5' in text
    assert f'{name}{{instance="0"' not in text  # refresh off there: no sample
