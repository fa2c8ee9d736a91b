"""Turn an OpenAI request into prompt token ids and engine sampling parameters, or a 400."""

from __future__ import annotations

from typing import Any

from starserve.server.protocol import ApiError, ChatCompletionRequest, CompletionRequest

MAX_INT32 = 2**31 - 1


def check_model(requested: str, served: str) -> None:
    if requested != served:
        raise ApiError(
            400,
            f"The model `{requested}` does not exist; this server serves `{served}`.",
            param="model",
        )


def completion_prompt(request: CompletionRequest) -> str | list[int]:
    prompt = request.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        if len(prompt) != 1:
            raise ApiError(400, "only one prompt per request is supported", param="prompt")
        return str(prompt[0])
    if isinstance(prompt, list):
        return [int(token) for token in prompt]
    return prompt


def check_token_ids(token_ids: list[int], vocab_size: int) -> None:
    if any(not 0 <= token < vocab_size for token in token_ids):
        raise ApiError(400, f"prompt token ids must be in [0, {vocab_size})", param="prompt")


def chat_messages(request: ChatCompletionRequest) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.text()} for m in request.messages]


def sampling_params(
    request: CompletionRequest | ChatCompletionRequest, num_prompt_tokens: int, max_model_len: int
) -> Any:
    """Engine `SamplingParams` for the request; ApiError(400) on any invalid value."""
    if num_prompt_tokens == 0:
        raise ApiError(400, "the prompt is empty", param="prompt")
    if request.n != 1:
        raise ApiError(400, "only n=1 is supported", param="n")
    if num_prompt_tokens >= max_model_len:
        raise ApiError(
            400,
            f"This model's maximum context length is {max_model_len} tokens; "
            f"the prompt has {num_prompt_tokens} tokens.",
            param="prompt",
        )
    _check_ranges(request)
    room = max_model_len - num_prompt_tokens
    max_tokens = request.max_completion_tokens or request.max_tokens
    if max_tokens is None:
        max_tokens = room
    elif max_tokens > room:
        raise ApiError(
            400,
            f"This model's maximum context length is {max_model_len} tokens; you requested "
            f"{num_prompt_tokens + max_tokens} tokens ({num_prompt_tokens} in the prompt, "
            f"{max_tokens} for the completion).",
            param="max_tokens",
        )
    from starserve.engine import SamplingParams

    stop = (request.stop,) if isinstance(request.stop, str) else tuple(request.stop or ())
    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if request.temperature is None else request.temperature,
        top_p=1.0 if request.top_p is None else request.top_p,
        top_k=0 if request.top_k is None or request.top_k < 0 else request.top_k,
        seed=request.seed,
        stop=stop,
        ignore_eos=request.ignore_eos,
    )
    try:
        params.validate()
    except ValueError as err:
        raise ApiError(400, str(err)) from None
    return params


def _check_ranges(request: CompletionRequest | ChatCompletionRequest) -> None:
    """OpenAI's documented ranges (the engine checks its own invariants as well)."""
    checks = (
        ("temperature", request.temperature, lambda v: 0 <= v <= 2, "between 0 and 2"),
        ("top_p", request.top_p, lambda v: 0 < v <= 1, "in (0, 1]"),
        ("max_tokens", request.max_tokens, lambda v: v >= 1, "at least 1"),
        ("max_completion_tokens", request.max_completion_tokens, lambda v: v >= 1, "at least 1"),
        ("top_k", request.top_k, lambda v: -1 <= v <= MAX_INT32, "-1 (off), 0 (off) or positive"),
        ("seed", request.seed, lambda v: -(2**63) <= v < 2**64, "a 64-bit integer"),
    )
    for name, value, ok, expected in checks:
        if value is not None and not ok(value):
            raise ApiError(400, f"{name} must be {expected}, got {value}", param=name)
