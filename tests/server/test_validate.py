"""OpenAI request validation: every invalid value is a 400 naming the field."""

from __future__ import annotations

import pytest

from starserve.server.protocol import ApiError, CompletionRequest
from starserve.server.validate import check_model, completion_prompt, sampling_params

MODEL = "SmolLM2-135M-Instruct"


@pytest.mark.parametrize(
    ("fields", "num_prompt_tokens", "param"),
    [
        ({"temperature": -0.5}, 5, "temperature"),
        ({"temperature": 2.5}, 5, "temperature"),
        ({"top_p": 0}, 5, "top_p"),
        ({"top_p": 1.5}, 5, "top_p"),
        ({"max_tokens": 0}, 5, "max_tokens"),
        ({"top_k": -3}, 5, "top_k"),
        ({}, 2048, "prompt"),  # the prompt alone fills the context
        ({"max_tokens": 100}, 2000, "max_tokens"),  # prompt + output exceed it
        ({}, 0, "prompt"),
        ({"n": 2}, 5, "n"),
    ],
)
def test_invalid_values_are_400(
    fields: dict[str, object], num_prompt_tokens: int, param: str
) -> None:
    request = CompletionRequest(model=MODEL, prompt="x", **fields)  # type: ignore[arg-type]
    with pytest.raises(ApiError) as caught:
        sampling_params(request, num_prompt_tokens, max_model_len=2048)
    assert caught.value.status_code == 400
    assert caught.value.body()["error"]["type"] == "invalid_request_error"
    assert param in caught.value.message or caught.value.param == param


def test_model_and_prompt_shapes() -> None:
    with pytest.raises(ApiError, match="does not exist"):
        check_model("gpt-4", MODEL)
    check_model(MODEL, MODEL)
    assert completion_prompt(CompletionRequest(model=MODEL, prompt=["one"])) == "one"
    assert completion_prompt(CompletionRequest(model=MODEL, prompt=[1, 2, 3])) == [1, 2, 3]
    with pytest.raises(ApiError, match="one prompt"):
        completion_prompt(CompletionRequest(model=MODEL, prompt=["a", "b"]))
