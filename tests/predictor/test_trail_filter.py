import numpy as np
import pytest

from starserve.predictor.trail import bin_edges, bin_index, filter_step, transition_matrix


@pytest.mark.parametrize("kind", ["equal", "log"])
def test_bins_cover_zero_to_cap(kind: str) -> None:
    edges = bin_edges(kind, 10, 512)
    assert edges[0] == pytest.approx(0.0) and edges[-1] == pytest.approx(512.0)
    assert np.all(np.diff(edges) > 0)
    assert bin_index(np.array([0, 511, 512, 9999]), edges).tolist()[0] == 0
    assert bin_index(np.array([9999]), edges)[0] == 9


@pytest.mark.parametrize("kind", ["equal", "log"])
def test_filter_keeps_a_distribution_and_moves_mass_down(kind: str) -> None:
    edges = bin_edges(kind, 10, 512)
    midpoints = (edges[:-1] + edges[1:]) / 2
    flat = np.full(10, 0.1)
    posterior = filter_step(None, np.eye(10)[7] * 0.9 + 0.01, np.eye(10))
    start_upper = posterior[7:].sum()
    means = [posterior @ midpoints]
    for _ in range(6):
        posterior = filter_step(posterior, flat, transition_matrix(edges, 16))
        assert posterior.min() >= 0 and posterior.sum() == pytest.approx(1.0)
        means.append(posterior @ midpoints)
    assert all(b < a for a, b in zip(means, means[1:], strict=False)), means
    # mass moves toward shorter bins: the top bins only drain
    assert posterior[7:].sum() < 0.5 * start_upper
    assert posterior[:7].sum() > 0.5


def test_transition_rows_are_stochastic_and_bottom_bin_absorbs() -> None:
    t = transition_matrix(bin_edges("equal", 10, 512), 40)
    assert np.allclose(t.sum(1), 1.0)
    assert t[0, 0] == pytest.approx(1.0)
    assert np.allclose(np.triu(t, 1), 0.0)


def test_filter_recovers_when_evidence_contradicts_prior() -> None:
    edges = bin_edges("equal", 10, 512)
    prior = np.eye(10)[0]
    post = filter_step(prior, np.eye(10)[9], transition_matrix(edges, 16))
    assert post.sum() == pytest.approx(1.0) and np.isfinite(post).all()
