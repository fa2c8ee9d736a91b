"""The common request stream every loader and arrival process produces."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class WorkloadRequest:
    """One request of a workload, independent of where it came from.

    Traces give lengths in tokens of the tokenizer their source used; prompt text is present
    only for prompt sets (it is what the real runtime sends).
    """

    request_id: str
    arrival_time_s: float
    num_prompt_tokens: int
    num_output_tokens: int
    prompt: str | None = None
