"""PLP baseline, STAR's conformal quantiles, and eval by progress, on synthetic collections."""

import json

import numpy as np
import torch
from predictor_synthetic import synthetic_dataset

from starserve.predictor.plp import PlpArchitecture, PlpMLP, predict_plp, soft_labels, train_plp
from starserve.predictor.star import conformal_log_offsets
from starserve.predictor.training import FitConfig

FAST = FitConfig(max_epochs=8, batch_size=128, learning_rate=3e-3, patience_epochs=4)


def test_soft_labels_peak_at_the_true_bin_and_sum_to_one() -> None:
    model = PlpMLP(PlpArchitecture(8, num_bins=16, max_output_tokens=160))
    labels = soft_labels(torch.tensor([5.0, 83.0, 500.0]), model)
    torch.testing.assert_close(labels.sum(1), torch.ones(3))
    assert labels.argmax(1).tolist() == [0, 8, 15]  # 500 is past the cap: the last bin


def test_plp_learns_remaining_length_from_pooled_states() -> None:
    ds = synthetic_dataset(num_prompts=60)
    train, val, test = ds.split("train"), ds.split("val"), ds.split("test")
    model, result = train_plp(train, val, FAST)
    assert result.best_val_loss < result.val_losses[0]
    assert model.arch.readout in ("mean", "median")
    errors = np.abs(predict_plp(model, test) - test.remaining()).mean()
    baseline = np.abs(test.remaining() - train.remaining().mean()).mean()
    assert errors < 0.6 * baseline


def test_conformal_offsets_give_nominal_coverage_on_the_fitted_points() -> None:
    rng = np.random.default_rng(0)
    truth = torch.from_numpy(rng.integers(0, 800, size=4000).astype(np.float32))
    biased = torch.stack([truth * 0.3, truth * 0.4, truth * 0.5], 1)  # all far too low
    shifts = conformal_log_offsets(biased, truth, (0.1, 0.5, 0.9))
    adjusted = torch.expm1(torch.log1p(biased) + shifts)
    shares = (truth[:, None] <= adjusted + 1e-3).float().mean(0)
    torch.testing.assert_close(shares, torch.tensor([0.1, 0.5, 0.9]), atol=0.02, rtol=0)


def test_train_all_then_eval_reports_plp_by_progress_and_calibration(tmp_path) -> None:
    from starserve.predictor.report import run_eval
    from starserve.predictor.train import save_all, train_all

    ds = synthetic_dataset(num_prompts=30, cap=512)
    train, val, test = ds.split("train"), ds.split("val"), ds.split("test")
    trained = train_all(train, val, FAST)
    assert trained.plp is not None and trained.star.arch.calibrated
    save_all(tmp_path / "models", trained, train, val)
    result = run_eval(tmp_path / "models", test, tmp_path / "out", 0.05)
    written = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert "plp" in written["predictors"] and set(written["by_progress"]) == set(
        written["predictors"]
    )
    for buckets in written["by_progress"].values():
        assert set(buckets) == {"0-64", "64-256", "256-1024", ">=1024"}
        assert buckets["0-64"] is not None and buckets[">=1024"] is None  # cap 512
    for name in ("star_mlp", "plp"):
        cal = written["calibration"][name]
        assert 0 <= cal["P10"] <= cal["P50"] <= cal["P90"] <= 1
        assert cal["max_abs_error_points"] >= 0
    assert result["predictors"]["plp"]["params"] > 0
    assert (tmp_path / "out" / "mae_vs_progress.png").stat().st_size > 1000
