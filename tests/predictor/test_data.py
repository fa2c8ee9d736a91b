import json

import numpy as np
import pytest
from predictor_synthetic import synthetic_dataset, synthetic_shard

from starserve.errors import StarserveError
from starserve.predictor.data import load_dataset, read_shard, split_of, write_shard


def test_splits_share_no_prompt_and_cover_all_requests() -> None:
    ds = synthetic_dataset(num_prompts=120)
    parts = {name: ds.split(name) for name in ("train", "val", "test")}
    prompt_sets = {name: {r.prompt_id for r in p.requests} for name, p in parts.items()}
    assert all(prompt_sets.values()), "every split must be non-empty"
    assert not prompt_sets["train"] & prompt_sets["val"]
    assert not prompt_sets["train"] & prompt_sets["test"]
    assert not prompt_sets["val"] & prompt_sets["test"]
    assert sum(len(p.requests) for p in parts.values()) == len(ds.requests)
    assert sum(p.num_points for p in parts.values()) == ds.num_points
    share = len(prompt_sets["train"]) / 120
    assert 0.55 < share < 0.85


def test_split_is_by_prompt_so_samples_stay_together() -> None:
    assert split_of("a:1") == split_of("a:1")
    ds = synthetic_dataset(num_prompts=30, samples=3)
    test = ds.split("test")
    for pid in {r.prompt_id for r in test.requests}:
        assert sum(r.prompt_id == pid for r in test.requests) == 3


def test_subset_keeps_points_with_their_requests() -> None:
    ds = synthetic_dataset(num_prompts=20)
    sub = ds.split("train")
    lengths = sub.output_lengths()[sub.point_request]
    assert np.all(sub.remaining() == lengths - sub.point_generated)
    assert np.all(sub.remaining() >= 0)


def test_shard_roundtrip_and_dataset_loading(tmp_path) -> None:
    shard = synthetic_shard(num_prompts=5)
    write_shard(tmp_path / "shard-00000.safetensors", shard)
    back = read_shard(tmp_path / "shard-00000.safetensors")
    assert back.requests == shard.requests
    assert back.hidden_last.dtype == np.float16
    np.testing.assert_array_equal(back.point_generated, shard.point_generated)
    with pytest.raises(StarserveError, match="manifest"):
        load_dataset(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"max_tokens": 256}))
    ds = load_dataset(tmp_path)
    assert ds.num_points == len(shard.point_request)
    assert np.all(np.diff(ds.point_request) >= 0)
