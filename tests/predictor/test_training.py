import numpy as np
import pytest
import torch
from predictor_synthetic import synthetic_dataset

from starserve.errors import StarserveError
from starserve.predictor.baselines import MeanResidualLife
from starserve.predictor.runtime import load_predictor
from starserve.predictor.star import StarArchitecture, StarMLP
from starserve.predictor.store import save_module
from starserve.predictor.train import train_star, train_trail
from starserve.predictor.training import FitConfig

FAST = FitConfig(max_epochs=15, batch_size=128, learning_rate=3e-3, patience_epochs=5)


def test_star_training_lowers_validation_loss_and_beats_mean_residual() -> None:
    ds = synthetic_dataset(num_prompts=60)
    train, val = ds.split("train"), ds.split("val")
    model, result = train_star(train, val, FAST)
    assert result.best_val_loss < 0.7 * result.val_losses[0]
    with torch.no_grad():
        pred = model(
            torch.from_numpy(val.hidden_last.astype(np.float32)),
            torch.from_numpy(val.point_generated.astype(np.int64)),
        )
    mae_star = np.abs(pred[:, 1].numpy() - val.remaining()).mean()
    mrl = MeanResidualLife(train.output_lengths(), train.max_output_tokens)
    mae_mrl = np.abs(mrl.predict(val.point_generated) - val.remaining()).mean()
    assert mae_star < mae_mrl
    assert torch.all(pred[:, 0] <= pred[:, 1]) and torch.all(pred[:, 1] <= pred[:, 2])


@pytest.mark.parametrize("kind", ["equal", "log"])
def test_trail_training_lowers_cross_entropy(kind: str) -> None:
    ds = synthetic_dataset(num_prompts=60)
    _, result = train_trail(ds.split("train"), ds.split("val"), kind, FAST)
    assert result.best_val_loss < 0.9 * result.val_losses[0]


def test_mean_residual_life_matches_brute_force() -> None:
    lengths = np.array([10, 20, 20, 50, 100])
    mrl = MeanResidualLife(lengths, 128)
    for g in (0, 5, 10, 20, 21, 99, 100, 101, 128):
        alive = lengths[lengths >= g]
        expected = (alive - g).mean() if len(alive) else 0.0
        assert mrl.predict(np.array([g]))[0] == pytest.approx(expected)


def test_runtime_roundtrip_gives_finite_nonnegative_predictions(tmp_path) -> None:
    model = StarMLP(StarArchitecture(hidden_size=32, max_output_tokens=256))
    save_module(tmp_path, "star_mlp", model, {"interval": 16, "max_output_tokens": 256})
    predictor = load_predictor(tmp_path)
    assert predictor.hidden_size == 32 and predictor.interval == 16
    out = predictor.predict(torch.randn(5, 32) * 10, torch.tensor([0, 1, 16, 200, 5000]))
    assert out.shape == (5,) and torch.isfinite(out).all() and (out >= 0).all()
    q = predictor.predict_quantiles(torch.randn(3, 32), torch.tensor([1, 2, 3]))
    assert q.shape == (3, 3) and torch.all(q[:, :-1] <= q[:, 1:])
    with pytest.raises(ValueError, match=r"\[B, 32\]"):
        predictor.predict(torch.randn(2, 31), torch.tensor([1, 2]))
    with pytest.raises(StarserveError):
        load_predictor(tmp_path / "missing")


def test_star_projection_is_picked_on_validation_and_survives_saving(tmp_path) -> None:
    from starserve.predictor.train import STAR_PROJECTION_DIMS

    ds = synthetic_dataset(num_prompts=60)
    model, _ = train_star(ds.split("train"), ds.split("val"), FAST)
    assert model.arch.projection_dim in STAR_PROJECTION_DIMS and model.projection is not None
    basis = model.projection.detach()
    # principal directions: orthonormal columns of the standardised training states
    torch.testing.assert_close(basis.T @ basis, torch.eye(basis.shape[1]), atol=1e-4, rtol=0)
    save_module(tmp_path, "star_mlp", model, {"interval": 16, "max_output_tokens": 256})
    hidden, generated = torch.randn(4, ds.hidden_size), torch.tensor([1, 17, 33, 49])
    with torch.no_grad():
        expected = model(hidden, generated)[:, 1]
    torch.testing.assert_close(load_predictor(tmp_path).predict(hidden, generated), expected)
