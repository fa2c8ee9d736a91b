"""Engine behaviour: bad input, preemption, leaks, stop criteria, streaming, hidden-state tap."""

from __future__ import annotations

import pytest
import torch

from starserve.engine import SamplingParams

GREEDY = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)


BAD_INPUTS = [
    ([], GREEDY, "empty prompt"),
    ("", GREEDY, "empty prompt"),
    ([5] * 300, GREEDY, "max_model_len"),
    ([5], SamplingParams(max_tokens=0), "max_tokens"),
    ([5], SamplingParams(max_tokens=-3), "max_tokens"),
    ([5], SamplingParams(temperature=-0.1), "temperature"),
    ([5], SamplingParams(top_p=0.0), "top_p"),
    ([5], SamplingParams(top_p=1.5), "top_p"),
    ([5], SamplingParams(top_k=-1), "top_k"),
    ([10**6], GREEDY, "token ids"),
]


def test_bad_input_is_a_value_error_and_others_keep_running(make_engine, chat_prompts):
    reference = make_engine().generate([chat_prompts[0]], GREEDY)[0].new_token_ids
    engine = make_engine(max_model_len=256)
    engine.add_request("good", chat_prompts[0], GREEDY)
    tokens: list[int] = []
    assert BAD_INPUTS
    for number, (prompt, params, message) in enumerate(BAD_INPUTS):
        with pytest.raises(ValueError, match=message):
            engine.add_request(f"bad-{number}", prompt, params)
        tokens += [t for out in engine.step() for t in out.new_token_ids]
    with pytest.raises(ValueError, match="already in use"):
        engine.add_request("good", [5], GREEDY)
    while engine.has_unfinished_requests():
        tokens += [t for out in engine.step() for t in out.new_token_ids]
    assert tokens == reference
    assert engine.stats().requests == ()
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks


def test_preempted_requests_recompute_to_the_same_tokens(make_engine, chat_prompts):
    prompts = chat_prompts[:5]
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    reference = [o.new_token_ids for o in make_engine(num_kv_blocks=128).generate(prompts, params)]
    # Room for every prompt, not for every prompt plus its 24 new tokens: decoding must preempt.
    prompt_blocks = sum(-(-(len(p) + 1) // 16) for p in prompts)
    tight = make_engine(num_kv_blocks=prompt_blocks + 1)
    outputs = tight.generate(prompts, params)
    assert tight.stats().num_preemptions_total > 0
    assert [o.new_token_ids for o in outputs] == reference
    assert tight.blocks.num_free_blocks == tight.blocks.num_blocks


def test_chunked_prefill_matches_one_shot_prefill(make_engine, chat_prompts):
    prompts = chat_prompts[4:7]
    reference = [o.new_token_ids for o in make_engine().generate(prompts, GREEDY)]
    chunked = make_engine(max_num_batched_tokens=24)
    assert [o.new_token_ids for o in chunked.generate(prompts, GREEDY)] == reference


def test_abort_frees_blocks_and_reports(make_engine, chat_prompts):
    engine = make_engine()
    engine.add_request("a", chat_prompts[0], GREEDY)
    engine.add_request("b", chat_prompts[1], GREEDY)
    engine.step()
    engine.abort_request("a")
    outputs = engine.step()
    aborted = [o for o in outputs if o.request_id == "a"]
    assert aborted and aborted[0].finished and aborted[0].finish_reason == "abort"
    while engine.has_unfinished_requests():
        engine.step()
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks
    with pytest.raises(KeyError):
        engine.abort_request("a")


def test_stop_criteria_and_streamed_text(make_engine, chat_prompts, weights):
    engine = make_engine()
    free_run = engine.generate([chat_prompts[0]], SamplingParams(max_tokens=30, temperature=0))[0]
    assert free_run.new_text == weights.tokenizer.decode(
        free_run.new_token_ids, skip_special_tokens=True
    )
    assert free_run.finish_reason in ("stop", "length")
    stop_id = free_run.new_token_ids[5]
    by_id = engine.generate(
        [chat_prompts[0]], SamplingParams(temperature=0, stop_token_ids=(stop_id,))
    )
    assert (
        by_id[0].new_token_ids
        == free_run.new_token_ids[: free_run.new_token_ids.index(stop_id) + 1]
    )
    assert by_id[0].finish_reason == "stop"
    stop_text = free_run.new_text[20:26]
    by_text = engine.generate([chat_prompts[0]], SamplingParams(temperature=0, stop=(stop_text,)))[
        0
    ]
    assert by_text.finish_reason == "stop"
    assert by_text.new_text == free_run.new_text[: free_run.new_text.index(stop_text)]
    limited = engine.generate([chat_prompts[0]], SamplingParams(max_tokens=3, temperature=0))[0]
    assert limited.finish_reason == "length" and len(limited.new_token_ids) == 3


def test_eos_stops_unless_ignored(make_engine, weights):
    engine = make_engine()
    eos = weights.config.eos_token_ids[0]
    prompt = engine.apply_chat_template([{"role": "user", "content": "Say only the word yes."}])
    stopped = engine.generate([prompt], SamplingParams(max_tokens=40, temperature=0))[0]
    assert stopped.finish_reason == "stop" and stopped.new_token_ids[-1] == eos
    ignored = engine.generate(
        [prompt], SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)
    )[0]
    assert len(ignored.new_token_ids) == 40 and ignored.finish_reason == "length"


def test_seeded_sampling_is_reproducible_and_seed_dependent(make_engine, chat_prompts):
    engine = make_engine()
    params = [
        SamplingParams(max_tokens=12, temperature=1.0, seed=s, ignore_eos=True) for s in (1, 1, 2)
    ]
    outs = [engine.generate([chat_prompts[0]], p)[0].new_token_ids for p in params]
    assert outs[0] == outs[1] and outs[0] != outs[2]


def test_hidden_state_tap_equals_transformers_hidden_states(make_engine, chat_prompts, weights):
    from transformers import AutoModelForCausalLM

    engine = make_engine(hidden_state_interval=4, hidden_state_middle_layer=10)
    engine.add_request(
        "r", chat_prompts[0], SamplingParams(max_tokens=9, temperature=0, ignore_eos=True)
    )
    taps: list[tuple[int, torch.Tensor, torch.Tensor]] = []
    tokens: list[int] = []
    while engine.has_unfinished_requests():
        for out in engine.step():
            tokens += out.new_token_ids
            assert (out.hidden_last is None) == (out.hidden_middle is None)
            if out.hidden_last is not None:
                taps.append((out.num_generated_tokens, out.hidden_last, out.hidden_middle))
    assert [t[0] for t in taps] == [1, 5, 9]  # first token, then every 4
    hf = AutoModelForCausalLM.from_pretrained(str(weights.hf_dir), dtype=torch.float32)
    with torch.inference_mode():
        full = torch.tensor([chat_prompts[0] + tokens])
        states = hf(full, output_hidden_states=True).hidden_states
    for num_generated, last, middle in taps:
        position = len(chat_prompts[0]) + num_generated - 2  # the token that was sampled from
        assert last.shape == (weights.config.hidden_size,) and last.dtype == torch.float32
        torch.testing.assert_close(last, states[-1][0, position], atol=2e-3, rtol=1e-3)
        torch.testing.assert_close(middle, states[11][0, position], atol=2e-3, rtol=1e-3)


def test_two_engines_share_a_model_and_stats(make_engine, chat_prompts):
    first, second = make_engine(), make_engine()
    first.add_request("x", chat_prompts[0], GREEDY)
    second.add_request("x", chat_prompts[1], GREEDY)  # same id, separate engines
    first.step()
    stats = first.stats()
    assert stats.num_running == 1 and stats.num_waiting == 0
    # (id, context, generated, token budget: max_tokens minus the one generated)
    assert stats.requests == (("x", len(chat_prompts[0]) + 1, 1, GREEDY.max_tokens - 1),)
    assert stats.num_free_blocks < stats.num_total_blocks and stats.last_step_time_s > 0
    assert second.stats().num_running == 0 and second.stats().num_waiting == 1


def test_a_request_larger_than_the_whole_cache_ends_at_length(make_engine, chat_prompts):
    engine = make_engine(num_kv_blocks=8, block_size=16)  # 128 tokens of KV in all
    engine.add_request(
        "r", chat_prompts[0], SamplingParams(max_tokens=500, temperature=0, ignore_eos=True)
    )
    outputs = []
    for _ in range(400):  # without the cap this loops on preempt/recompute and never finishes
        outputs += engine.step()
        if not engine.has_unfinished_requests():
            break
    final = [o for o in outputs if o.finished]
    assert len(final) == 1 and final[0].finish_reason == "length"
    assert final[0].num_prompt_tokens + final[0].num_generated_tokens == 128
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks


def test_token_entropy_is_reported_only_when_asked(make_engine, chat_prompts):
    params = SamplingParams(max_tokens=6, temperature=0.7, seed=1)
    assert make_engine().generate([chat_prompts[0]], params)[0].token_entropy is None
    engine = make_engine(token_entropy=True)
    engine.add_request("r", chat_prompts[0], params)
    entropies: list[float] = []
    while engine.has_unfinished_requests():
        entropies += [o.token_entropy for o in engine.step() if o.token_entropy is not None]
    vocab = engine.weights.config.vocab_size
    assert len(entropies) >= 1
    assert all(0.0 <= h <= float(torch.log(torch.tensor(float(vocab)))) for h in entropies)
    assert len(set(entropies)) == len(entropies)  # one per token, not one value repeated
