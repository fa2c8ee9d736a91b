"""Collection extras: step-by-step math prompts, entropy-weighted segment pools, old shards."""

import json

import numpy as np
import pytest
import torch
from predictor_synthetic import synthetic_shard

from starserve.engine.sampler import predictive_entropy
from starserve.predictor.collect import CollectSettings, InFlight, Job, build_shard, plan_jobs
from starserve.predictor.data import load_dataset, read_shard, write_shard
from starserve.predictor.prompts import STEP_BY_STEP, PromptRow


def test_step_by_step_is_appended_to_math_problems_only(tmp_path) -> None:
    math, chat = tmp_path / "math.jsonl", tmp_path / "chat.jsonl"
    math.write_text('{"id": 1, "problem": "What is 2+2?"}\n')
    chat.write_text('{"id": 1, "prompt": "Say hi."}\n')
    plain = plan_jobs([math, chat], CollectSettings(samples_per_prompt=1))
    assert [j.row.text for j in plain] == ["What is 2+2?", "Say hi."]
    jobs = plan_jobs([math, chat], CollectSettings(samples_per_prompt=1, step_by_step=True))
    assert jobs[0].row.text == f"What is 2+2?\n\n{STEP_BY_STEP}"
    assert jobs[1].row.text == "Say hi."
    assert [j.request_id for j in jobs] == [j.request_id for j in plain]  # same prompt ids


def test_segment_pools_weight_tokens_by_softmax_of_entropy() -> None:
    flight = InFlight(Job(PromptRow("s:1", "s", "x"), 0), 3)
    rng = np.random.default_rng(0)
    states = rng.normal(size=(20, 8)).astype(np.float32)
    entropies = rng.uniform(0.0, 4.0, size=20)
    for g in range(1, 21):  # interval 8: taps at 1, 9, 17
        flight.add_token(g, 8, states[g - 1], None, float(entropies[g - 1]))
    assert flight.generated == [1, 9, 17]
    segment = slice(1, 9)  # tokens 2..9 make the second tap's segment
    w = np.exp(entropies[segment])
    want = (w[:, None] * states[segment]).sum(0) / w.sum()
    np.testing.assert_allclose(flight.pools["pool_entropy"][1], want, atol=2e-3)
    np.testing.assert_allclose(flight.pools["pool_weight"][1], w.sum(), rtol=1e-5)
    np.testing.assert_allclose(flight.pools["pool_mean"][1], states[segment].mean(0), atol=2e-3)
    assert flight.pools["segment_entropy"][1] == pytest.approx(entropies[segment].mean())
    np.testing.assert_allclose(flight.pools["pool_mean"][0], states[0], atol=2e-3)
    shard = build_shard([(None, flight)])  # type: ignore[list-item]
    assert shard.pools["pool_entropy"].shape == (3, 8)


def test_pools_roundtrip_and_old_shards_without_them_stay_readable(tmp_path) -> None:
    new, old = tmp_path / "new", tmp_path / "old"
    for directory, pools in ((new, True), (old, False)):
        directory.mkdir()
        write_shard(directory / "shard-00000.safetensors", synthetic_shard(5, pools=pools))
        (directory / "manifest.json").write_text(json.dumps({"max_tokens": 256}))
    back = read_shard(new / "shard-00000.safetensors")
    assert set(back.pools) == {"pool_entropy", "pool_weight", "pool_mean", "segment_entropy"}
    ds = load_dataset(new)
    assert ds.pools["pool_entropy"].shape == ds.hidden_last.shape
    sub = ds.split("train")
    assert sub.pools["pool_weight"].shape == (sub.num_points,)
    assert load_dataset(old).pools == {}


def test_predictive_entropy_matches_the_definition() -> None:
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [10.0, -10.0, -10.0, -10.0]])
    entropy = predictive_entropy(logits)
    assert entropy[0].item() == pytest.approx(np.log(4.0), rel=1e-5)
    assert entropy[1].item() < 1e-6


def _collected(num_requests: int, lengths: list[int], interval: int, hidden: int = 6):
    """A dataset built through the collector's own pooling, plus the raw per-token inputs."""
    from starserve.predictor.data import RequestRecord, concat_shards

    rng = np.random.default_rng(1)
    finished, raw = [], []
    for index in range(num_requests):
        flight = InFlight(Job(PromptRow(f"s:{index}", "s", "x"), 0), 3)
        states = rng.normal(size=(lengths[index], hidden)).astype(np.float32)
        entropies = rng.uniform(0.0, 3.0, size=lengths[index])
        for g in range(1, lengths[index] + 1):
            flight.add_token(g, interval, states[g - 1], None, float(entropies[g - 1]))
        record = RequestRecord(f"s:{index}", "s", 0, "x", 3, lengths[index], "stop")
        finished.append((record, flight))
        raw.append((states, entropies))
    return concat_shards([build_shard(finished)], 64, {}), raw


def test_entropy_and_recent_pools_equal_their_definitions_over_tokens() -> None:
    from starserve.predictor.pooling import entropy_pool, recent_pool

    ds, raw = _collected(3, [30, 9, 41], interval=4)
    pooled, recent = entropy_pool(ds), recent_pool(ds, 2)
    for point in range(ds.num_points):
        states, entropies = raw[ds.point_request[point]]
        g = int(ds.point_generated[point])
        w = np.exp(entropies[:g])
        want = (w[:, None] * states[:g]).sum(0) / w.sum()
        np.testing.assert_allclose(pooled[point], want, atol=5e-3)
        first = max(0, g - 8) if g > 1 else 0  # two segments of 4 tokens (the first is 1)
        if g <= 5:
            first = 0
        np.testing.assert_allclose(recent[point], states[first:g].mean(0), atol=5e-3)


def test_several_collections_load_as_one_and_must_share_the_cap(tmp_path) -> None:
    from starserve.errors import StarserveError

    dirs = [tmp_path / "a", tmp_path / "b", tmp_path / "c"]
    for directory, seed, cap in zip(dirs, (0, 1, 2), (256, 256, 512), strict=True):
        directory.mkdir()
        write_shard(directory / "shard-00000.safetensors", synthetic_shard(4, seed=seed))
        manifest = {"max_tokens": cap, "interval": 16, "prompt_files": [f"{directory.name}.jsonl"]}
        (directory / "manifest.json").write_text(json.dumps(manifest))
    both = load_dataset(dirs[:2])
    assert len(both.requests) == 16 and both.meta["prompt_files"] == ["a.jsonl", "b.jsonl"]
    assert both.pools["pool_entropy"].shape[0] == both.num_points
    with pytest.raises(StarserveError, match="max_tokens"):
        load_dataset([dirs[0], dirs[2]])
