"""Export / import keeps every token: one-shot, multi-stage, seeded sampling, and rollbacks."""

from __future__ import annotations

import pytest

from starserve.engine import EngineFullError, SamplingParams

GREEDY = SamplingParams(max_tokens=20, temperature=0, ignore_eos=True)
SEEDED = SamplingParams(
    max_tokens=20, temperature=0.9, top_p=0.9, top_k=50, seed=7, ignore_eos=True
)


def run_until(engine, request_id: str, num_generated: int) -> list[int]:
    tokens: list[int] = []
    while len(tokens) < num_generated:
        for out in engine.step():
            if out.request_id == request_id:
                tokens.extend(out.new_token_ids)
    return tokens


def run_to_end(engine, request_id: str) -> list[int]:
    tokens: list[int] = []
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.request_id == request_id:
                tokens.extend(out.new_token_ids)
    return tokens


def decode_and_export(engine, prompt, params, num_tokens):
    """Request "r" on `engine` until `num_tokens` tokens, then exported and released there:
    (the tokens so far, the snapshot)."""
    engine.add_request("r", prompt, params)
    tokens = run_until(engine, "r", num_tokens)
    snapshot = engine.export_request("r")
    engine.release_request("r")
    return tokens, snapshot


@pytest.mark.parametrize("params", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_one_shot_export_import_continues_exactly(make_engine, chat_prompts, params):
    prompt = chat_prompts[0]
    reference = make_engine().generate([prompt], params)[0].new_token_ids
    source, destination = make_engine(), make_engine()
    before, snapshot = decode_and_export(source, prompt, params, 7)
    assert snapshot.num_kv_tokens == len(prompt) + 6  # the newest token has no KV yet
    destination.import_request(snapshot)
    after = run_to_end(destination, "r")
    assert before + after == reference
    assert source.blocks.num_free_blocks == source.blocks.num_blocks
    assert destination.blocks.num_free_blocks == destination.blocks.num_blocks


def test_prefill_instance_hands_off_after_the_first_token(make_engine, chat_prompts):
    prompt = chat_prompts[5]
    reference = make_engine().generate([prompt], GREEDY)[0].new_token_ids
    prefill, decode = make_engine(), make_engine()
    prefill.add_request("r", prompt, GREEDY)
    first = prefill.step()
    assert [o.new_token_ids for o in first] == [reference[:1]]
    snapshot = prefill.export_request("r")
    assert snapshot.num_kv_tokens == len(prompt) and snapshot.first_block_index == 0
    prefill.release_request("r")
    decode.import_request(snapshot)
    assert reference[:1] + run_to_end(decode, "r") == reference
    assert prefill.stats().requests == () and not prefill.has_unfinished_requests()


@pytest.mark.parametrize("params", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_multi_stage_migration_continues_exactly(make_engine, chat_prompts, params):
    prompt = chat_prompts[1]
    reference = make_engine().generate([prompt], params)[0].new_token_ids
    source, destination = make_engine(block_size=4), make_engine(block_size=4)
    source.add_request("r", prompt, params)
    tokens = run_until(source, "r", 3)
    first = source.export_request("r")
    # a full export carries every block the request holds (ceil of its KV tokens / block size)
    assert first.first_block_index == 0
    assert first.num_blocks == -(-first.num_kv_tokens // 4)
    assert destination.reserve_import("r", first.num_kv_tokens + 8)
    destination.write_import_stage(first)
    tokens += run_until(source, "r", 9)  # the source keeps decoding between stages
    second = source.export_request("r", since_stage=first.stage)
    assert second.first_block_index == first.num_kv_tokens // 4
    assert second.num_blocks < first.num_blocks  # only the blocks added since
    destination.write_import_stage(second)
    source.pause_request("r")
    assert source.step() == []
    final = source.export_request("r", since_stage=second.stage)
    destination.commit_import(final)
    source.release_request("r")
    tokens += run_to_end(destination, "r")
    assert tokens == reference
    assert destination.blocks.num_free_blocks == destination.blocks.num_blocks


def test_pause_resume_keeps_tokens(make_engine, chat_prompts):
    prompt = chat_prompts[2]
    reference = make_engine().generate([prompt], GREEDY)[0].new_token_ids
    engine = make_engine()
    engine.add_request("r", prompt, GREEDY)
    tokens = run_until(engine, "r", 5)
    engine.pause_request("r")
    assert not engine.has_unfinished_requests()
    assert engine.step() == []
    engine.resume_request("r")
    tokens += run_to_end(engine, "r")
    assert tokens == reference


def test_aborted_and_refused_imports_leave_no_blocks(make_engine, chat_prompts):
    source = make_engine()
    source.add_request("r", chat_prompts[3], GREEDY)
    run_until(source, "r", 2)
    snapshot = source.export_request("r")
    small = make_engine(num_kv_blocks=2)
    assert not small.can_import(snapshot.num_kv_tokens)
    assert not small.reserve_import("r", snapshot.num_kv_tokens)
    with pytest.raises(EngineFullError):
        small.import_request(snapshot)
    assert small.blocks.num_free_blocks == 2
    destination = make_engine()
    assert destination.reserve_import("r", snapshot.num_kv_tokens)
    destination.write_import_stage(snapshot)
    assert destination.blocks.num_free_blocks < destination.blocks.num_blocks
    destination.abort_import("r")
    assert destination.blocks.num_free_blocks == destination.blocks.num_blocks
    source.resume_request("r")  # not paused: a no-op
    run_to_end(source, "r")
    assert source.blocks.num_free_blocks == source.blocks.num_blocks


def test_snapshot_with_other_layout_is_refused(make_engine, chat_prompts):
    source = make_engine(block_size=8)
    source.add_request("r", chat_prompts[4], GREEDY)
    run_until(source, "r", 1)
    snapshot = source.export_request("r")
    destination = make_engine()
    with pytest.raises(ValueError, match="layout"):
        destination.import_request(snapshot)
    assert destination.blocks.num_free_blocks == destination.blocks.num_blocks


@pytest.mark.parametrize("params", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_resume_onto_staged_kv_after_the_source_died(make_engine, chat_prompts, params):
    """A migration copied one stage, then its source died: the destination keeps the staged
    positions, prefills only the tokens the client received after them, and continues as an
    undisturbed run would."""
    prompt = chat_prompts[2]
    reference = make_engine().generate([prompt], params)[0].new_token_ids
    source, destination = make_engine(), make_engine()
    source.add_request("r", prompt, params)
    run_until(source, "r", 5)
    stage = source.export_request("r")
    assert destination.reserve_import("r", len(stage.token_ids) + 4)
    destination.write_import_stage(stage)
    streamed = [*reference[:5], *run_until(source, "r", 7)]  # the source went on, then died
    with pytest.raises(ValueError, match="no migration stage"):
        destination.resume_import("other", prompt, streamed, params)
    kept = destination.resume_import("r", prompt, streamed, params)
    assert kept == stage.num_kv_tokens == len(prompt) + 4
    after = run_to_end(destination, "r")
    assert streamed + after == reference
    assert destination.blocks.num_free_blocks == destination.blocks.num_blocks
    assert destination.staged_kv_tokens == {}


@pytest.mark.parametrize("params", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_failover_onto_a_kept_hand_off_snapshot(make_engine, chat_prompts, params):
    """The controller kept the request's prefill hand-off; its decode instance died later: a
    third instance writes the hand-off's KV, prefills only the tokens streamed after it
    (`InstanceWorker.resume_from`) and continues as an undisturbed run would."""
    from starserve.cluster.types import KvTransfer, WorkerConfig
    from starserve.cluster.worker import InstanceWorker

    prompt = chat_prompts[1]
    reference = make_engine().generate([prompt], params)[0].new_token_ids
    prefill, decode = make_engine(), make_engine()
    first, handoff = decode_and_export(prefill, prompt, params, 1)
    decode.import_request(handoff)
    streamed = first + run_until(decode, "r", 6)  # then the decode instance died
    survivor = InstanceWorker(WorkerConfig(2), engine=make_engine())
    assert survivor.resume_from(KvTransfer(handoff, None), prompt, streamed, params)
    assert survivor.engine.seqs["r"].num_computed_tokens == len(prompt)  # prompt not redone
    after = run_to_end(survivor.engine, "r")
    assert streamed + after == reference
    assert survivor.engine.blocks.num_free_blocks == survivor.engine.blocks.num_blocks
    full = InstanceWorker(WorkerConfig(3), engine=make_engine(num_kv_blocks=2))
    assert not full.resume_from(KvTransfer(handoff, None), prompt, streamed, params)
    assert full.engine.blocks.num_free_blocks == 2  # a refusal holds nothing


def test_migrated_request_takes_its_place_by_arrival(make_engine, chat_prompts):
    """A migrated request joins the destination's batch by arrival time (it is not the first
    preemption victim for having arrived last); a prefill hand-off joins at the end."""
    old, new, hand_off = make_engine(), make_engine(), make_engine()
    hand_off.add_request("early", chat_prompts[2], GREEDY)  # the oldest of all
    old.add_request("old", chat_prompts[0], GREEDY)
    run_until(old, "old", 3)
    new.add_request("young", chat_prompts[1], GREEDY)
    run_until(new, "young", 2)
    assert old.seqs["old"].arrival_s < new.seqs["young"].arrival_s
    snapshot = old.export_request("old")
    old.pause_request("old")
    assert new.reserve_import("old", len(snapshot.token_ids) + 1)
    new.commit_import(old.export_request("old", snapshot.stage))
    assert [s.request_id for s in new.scheduler.running] == ["old", "young"]
    assert new.seqs["old"].arrival_s == old.seqs["old"].arrival_s
    hand_off.step()
    new.import_request(hand_off.export_request("early"))
    assert [s.request_id for s in new.scheduler.running] == ["old", "young", "early"]
