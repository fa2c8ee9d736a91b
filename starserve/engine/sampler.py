"""Token sampling: greedy rows in one argmax; sampled rows share one softmax and one top-k.

Temperature, then top-k, then top-p over the top-k survivors, then one draw from the request's
own generator (so a seeded request samples the same tokens wherever it runs). Every sampled
token takes exactly one uniform draw from its generator (`advance_generator` relies on it: a
request replayed after a failure fast-forwards its seeded stream by its token count). The nucleus is
found among the `CANDIDATES` most likely tokens of every row at once; a row whose nucleus could
reach past them (top-p near 1 without a small top-k) is sampled over the whole vocabulary.
"""

from __future__ import annotations

import torch

from starserve.engine.params import SamplingParams

CANDIDATES = 1024


def sample_row(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """The whole-vocabulary path: temperature, top-k, top-p (over the top-k survivors), draw."""
    scaled = logits / params.temperature
    if params.top_k > 0 and params.top_k < scaled.shape[-1]:
        kth = torch.topk(scaled, params.top_k).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        sorted_probs = sorted_probs.masked_fill(mass_before >= params.top_p, 0.0)
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    cumulative = probs.cumsum(-1)
    draw = torch.rand((), generator=generator) * cumulative[-1]
    position = int(torch.searchsorted(cumulative, draw, right=True))
    return min(position, int(torch.nonzero(probs).max()))  # never past the last kept token


def advance_generator(generator: torch.Generator, num_draws: int) -> torch.Generator:
    """Skip `num_draws` sampled tokens' draws (one uniform each; see the module docstring)."""
    for _ in range(num_draws):
        torch.rand((), generator=generator)
    return generator


def nucleus(
    logits: torch.Tensor, params: list[SamplingParams]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For logits [S, vocab]: (kept probabilities [S, C] (unnormalised, descending), their token
    ids [S, C], and whether each row's nucleus lies wholly among its C candidates [S])."""
    vocab = logits.shape[-1]
    count = min(CANDIDATES, vocab)
    device = logits.device
    temperature = torch.tensor([p.temperature for p in params], dtype=logits.dtype, device=device)
    probs = torch.softmax(logits / temperature[:, None], dim=-1)
    top_probs, top_ids = torch.topk(probs, count, dim=-1)  # sorted, descending
    top_k = torch.tensor([p.top_k if 0 < p.top_k < vocab else vocab for p in params], device=device)
    top_p = torch.tensor([p.top_p for p in params], dtype=logits.dtype, device=device)
    rank = torch.arange(count, device=device)
    in_top_k = rank[None, :] < top_k[:, None]
    # top-p is measured on the distribution renormalised over the top-k survivors
    top_k_mass = torch.where(top_k <= count, (top_probs * in_top_k).sum(-1), 1.0)
    mass_before = (top_probs.cumsum(-1) - top_probs) / top_k_mass[:, None]
    in_top_p = (mass_before < top_p[:, None]) | (top_p[:, None] >= 1.0)  # 1.0 = off
    kept = top_probs * (in_top_k & in_top_p)
    # Complete: top-k cuts within the candidates, or there is no top-k and the candidates hold
    # the nucleus. (A top-k past the candidates needs the mass of tokens we did not look at.)
    candidate_mass = top_probs.sum(-1)
    complete = (top_k <= count) | ((top_k == vocab) & (candidate_mass >= top_p))
    return kept, top_ids, complete


def sample(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator],
) -> list[int]:
    """logits [S, vocab] float32; one params and generator per row."""
    tokens: list[int] = logits.argmax(dim=-1).tolist()
    rows = [row for row, row_params in enumerate(params) if not row_params.greedy]
    if not rows:
        return tokens
    # The nucleus is found where the logits are (GPU or CPU); the draws use each request's
    # CPU generator on the host, so a seeded request samples the same tokens on any device.
    kept, ids, complete = (t.cpu() for t in nucleus(logits[rows], [params[row] for row in rows]))
    cumulative = kept.cumsum(-1)
    for index, row in enumerate(rows):
        if not complete[index]:
            tokens[row] = sample_row(logits[row].cpu(), params[row], generators[row])
            continue
        draw = torch.rand((), generator=generators[row]) * cumulative[index, -1]
        position = int(torch.searchsorted(cumulative[index], draw, right=True))
        position = min(position, int((kept[index] > 0).sum()) - 1)  # never past the last kept
        tokens[row] = int(ids[index, position])
    return tokens


def predictive_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of softmax(logits) per row (temperature 1: the model's own distribution)."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    return -(log_probs.exp() * log_probs).sum(dim=-1)
