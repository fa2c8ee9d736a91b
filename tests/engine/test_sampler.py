"""The batched nucleus equals the whole-vocabulary reference, and draws follow it."""

from __future__ import annotations

import pytest
import torch

from starserve.engine.params import SamplingParams
from starserve.engine.sampler import nucleus, sample

VOCAB = 5000


def _reference_kept(logits: torch.Tensor, params: SamplingParams) -> set[int]:
    """Token ids with non-zero probability under temperature, top-k, then top-p (full sort)."""
    scaled = logits / params.temperature
    if 0 < params.top_k < scaled.shape[-1]:
        kth = torch.topk(scaled, params.top_k).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    sorted_probs, order = torch.sort(probs, descending=True)
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    keep = ((mass_before < params.top_p) | (params.top_p >= 1.0)) & (sorted_probs > 0)
    return set(order[keep].tolist())


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"),
    [(0.7, 0, 0.9), (1.0, 50, 0.95), (1.3, 0, 0.5), (0.5, 20, 1.0), (1.0, 0, 0.6)],
)
def test_nucleus_matches_full_sort(temperature: float, top_k: int, top_p: float) -> None:
    gen = torch.Generator().manual_seed(top_k)
    logits = torch.randn(6, VOCAB, generator=gen) * 6  # peaked, like a language model's
    params = [SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)] * 6
    kept, ids, complete = nucleus(logits, params)
    assert complete.any()
    for row in range(6):
        if complete[row]:
            assert set(ids[row][kept[row] > 0].tolist()) == _reference_kept(
                logits[row], params[row]
            )


def test_wide_nucleus_falls_back_to_the_whole_vocabulary() -> None:
    logits = torch.zeros(1, VOCAB)  # flat: the 0.99 nucleus holds ~4950 tokens, past 1024
    _, _, complete = nucleus(logits, [SamplingParams(temperature=1.0, top_p=0.99)])
    assert not complete[0]
    # a top-k past the candidates: its renormalising mass is unknown, so the row falls back
    peaked = torch.randn(1, VOCAB) * 6
    _, _, complete = nucleus(peaked, [SamplingParams(temperature=1.0, top_k=2000, top_p=0.5)])
    assert not complete[0]
    token = sample(logits, [SamplingParams(temperature=1.0, top_p=0.99)], [torch.Generator()])
    assert 0 <= token[0] < VOCAB


def test_draws_follow_the_nucleus_distribution_and_are_seeded() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05] + [1e-9] * 100]))
    params = SamplingParams(temperature=1.0, top_p=0.9)  # keeps 0.5, 0.3, 0.15
    generator = torch.Generator().manual_seed(0)
    counts = torch.zeros(104)
    for _ in range(4000):
        counts[sample(logits, [params], [generator])[0]] += 1
    assert counts[3:].sum() == 0
    share = counts[:3] / counts.sum()
    torch.testing.assert_close(share, torch.tensor([0.5, 0.3, 0.15]) / 0.95, atol=0.03, rtol=0)
    first = [sample(logits, [params], [torch.Generator().manual_seed(7)])[0] for _ in range(5)]
    assert len(set(first)) == 1
