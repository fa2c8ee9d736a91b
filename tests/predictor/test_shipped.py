"""The shipped predictor, its error profile and the committed sample, end to end."""

import json
import math

import numpy as np
import torch

from starserve.engine import Engine, EngineConfig, SamplingParams
from starserve.model import load_model
from starserve.predictor.data import load_dataset
from starserve.predictor.report import run_eval
from starserve.predictor.runtime import DEFAULT_DIR, load_predictor
from starserve.predictor.train import train_star
from starserve.predictor.training import FitConfig

SAMPLE = DEFAULT_DIR / "sample"


def test_shipped_predictor_runs_on_an_engine_hidden_state() -> None:
    predictor = load_predictor()
    engine = Engine(
        EngineConfig.model_validate(
            {"num_kv_blocks": 16, "hidden_state_interval": predictor.interval}
        ),
        load_model(None, "float32"),
    )
    prompt = engine.apply_chat_template(
        [{"role": "user", "content": "Name three rivers in Europe."}]
    )
    engine.add_request(
        "r", prompt, SamplingParams(max_tokens=predictor.interval + 1, temperature=0)
    )
    taps = []
    while engine.has_unfinished_requests():
        taps += [
            (o.hidden_last, o.num_generated_tokens)
            for o in engine.step()
            if o.hidden_last is not None
        ]
    assert len(taps) >= 2, "tap at the first token and after k more"
    hidden = torch.stack([h for h, _ in taps])
    generated = torch.tensor([g for _, g in taps])
    assert hidden.shape[1] == predictor.hidden_size
    remaining = predictor.predict(hidden, generated)
    assert torch.isfinite(remaining).all() and (remaining >= 0).all()
    quantiles = predictor.predict_quantiles(hidden, generated)
    assert torch.all(quantiles[:, :-1] <= quantiles[:, 1:])


def test_shipped_metadata_and_error_profile_are_well_formed() -> None:
    meta = json.loads((DEFAULT_DIR / "star_mlp.json").read_text())
    for key in ("model", "hidden_size", "interval", "training_data"):
        assert key in meta
    profile = json.loads((DEFAULT_DIR / "error_profile.json").read_text())
    assert profile["format"] == "starserve-predictor-error-profile" and profile["version"] == 1
    edges = profile["progress_bucket_edges"]
    assert (
        edges[0] == 0.0 and edges[-1] == 1.0 and len(profile["log_ratio_samples"]) == len(edges) - 1
    )
    assert all(
        0 < len(b) <= 500 and all(math.isfinite(x) for x in b) for b in profile["log_ratio_samples"]
    )


def test_training_on_the_committed_sample_lowers_validation_loss() -> None:
    ds = load_dataset(SAMPLE)
    _, result = train_star(
        ds.split("train"), ds.split("val"), FitConfig(max_epochs=10, patience_epochs=10)
    )
    assert result.best_val_loss < result.val_losses[0]


def test_eval_on_the_committed_sample_has_every_predictor_finite(tmp_path) -> None:
    test = load_dataset(SAMPLE).split("test")
    assert test.requests, "the sample must hold held-out prompts"
    result = run_eval(DEFAULT_DIR, test, tmp_path, 0.5)
    written = json.loads((tmp_path / "eval.json").read_text())
    names = {"star_mlp", "plp", "prompt_only_minilm", "trail", "trail_log_bins", "mean_residual"}
    assert set(written["predictors"]) == names == set(result["predictors"])
    for row in written["predictors"].values():
        for key in ("mae", "mae_per_request", "cost_us", "cost_fraction_of_step"):
            assert np.isfinite(row[key]) and row[key] >= 0
        assert isinstance(row["params"], int)
    assert (tmp_path / "mae_vs_progress.png").stat().st_size > 1000
