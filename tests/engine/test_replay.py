"""Token replay (failover after an instance died): re-prefill prompt + streamed tokens and
continue with exactly the tokens and text an undisturbed run produces."""

from __future__ import annotations

import pytest

from starserve.engine import SamplingParams

GREEDY = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
SEEDED = SamplingParams(
    max_tokens=24, temperature=0.9, top_p=0.9, top_k=50, seed=11, ignore_eos=True
)
WHOLE_VOCAB = SamplingParams(max_tokens=24, temperature=1.0, top_p=0.999, seed=5, ignore_eos=True)


def run(engine, request_id: str) -> tuple[list[int], str]:
    tokens, text = [], ""
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.request_id == request_id:
                tokens.extend(out.new_token_ids)
                text += out.new_text
    return tokens, text


@pytest.mark.parametrize("params", [GREEDY, SEEDED, WHOLE_VOCAB], ids=["greedy", "seeded", "vocab"])
def test_replay_continues_the_undisturbed_stream(make_engine, chat_prompts, params):
    prompt = chat_prompts[1]
    reference = make_engine()
    reference.add_request("r", prompt, params)
    tokens, text = run(reference, "r")
    assert len(tokens) == 24
    for cut in (1, 9):
        survivor = make_engine()
        survivor.replay_request("r", prompt, tokens[:cut], params)
        rest, rest_text = run(survivor, "r")
        assert tokens[:cut] + rest == tokens
        streamed = "".join(
            make_engine().detokenizer.tokenizer.decode(tokens[:cut], skip_special_tokens=True)
        )
        assert text.startswith(streamed) and streamed + rest_text == text
        assert survivor.blocks.num_free_blocks == survivor.blocks.num_blocks
