"""Decode throughput of the starserve engine vs transformers `generate`, side by side.

Same prompts (real alpaca_eval prompts, chat template), same dtype, greedy, a fixed number of
new tokens (no early stop on either side), one process. Also: engine step time at batch 1/8/32,
KV memory per 1k tokens, and export + import of a 1k-token request between two engines.

    python bench/engine_throughput.py [--quick] [--dtype auto|float32|bfloat16] [--threads N]

The last line printed is `RESULT {json}` with speedup_vs_hf_bs32, speedup_vs_hf_bs1 and
export_import_ms (plus the raw figures), tagged with the cpu, isa and dtype it ran on.
"""

from __future__ import annotations

import starserve  # noqa: F401  (first: a forced STARSERVE_ISA caps the libraries torch loads)

# isort: split
import argparse
import json
import statistics
import time

import torch

from starserve.engine import Engine, EngineConfig, SamplingParams
from starserve.hardware import DTYPE_CHOICES, DTYPE_HELP, resolve_dtype, result_tags, startup_line
from starserve.model import LoadedModel, load_model
from starserve.workload import load_workload


def chat_prompts(engine: Engine, count: int) -> list[list[int]]:
    requests = load_workload("alpaca_eval", num_requests=count, seed=1)
    return [
        engine.apply_chat_template([{"role": "user", "content": r.prompt or ""}]) for r in requests
    ]


def hf_tokens_per_s(
    hf: torch.nn.Module, prompts: list[list[int]], new_tokens: int, pad: int
) -> float:
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    start = time.perf_counter()
    with torch.inference_mode():
        hf.generate(  # type: ignore[operator]
            input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
            min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad,
        )  # fmt: skip
    return len(prompts) * new_tokens / (time.perf_counter() - start)


def engine_run(engine: Engine, prompts: list[list[int]], new_tokens: int) -> tuple[float, float]:
    """(tokens/s over the whole run, median decode step time in ms)."""
    params = SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True)
    for number, prompt in enumerate(prompts):
        engine.add_request(f"b{number}", prompt, params)
    step_times: list[float] = []
    start = time.perf_counter()
    while engine.has_unfinished_requests():
        outputs = engine.step()
        if len(outputs) == len(prompts) and engine.stats().num_waiting == 0:
            step_times.append(engine.last_step_time_s)
    elapsed = time.perf_counter() - start
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks
    return len(prompts) * new_tokens / elapsed, 1000 * statistics.median(step_times)


def export_import_ms(weights: LoadedModel, dtype: str, repeats: int) -> float:
    """Median time to export a 1k-token request and import it into a second engine."""
    config = EngineConfig(dtype=dtype, num_kv_blocks=80)  # type: ignore[arg-type]
    source, destination = Engine(config, weights), Engine(config, weights)
    source.add_request("long", list(range(1000, 2000)), SamplingParams(max_tokens=4, temperature=0))
    source.step()  # prefill 1000 tokens and sample the first
    times: list[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        snapshot = source.export_request("long")
        destination.import_request(snapshot)
        times.append(time.perf_counter() - start)
        destination.release_request("long")
    assert snapshot.num_kv_tokens == 1000
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="16 new tokens per request (< 1 min)")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto", help=DTYPE_HELP)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for both sides")
    parser.add_argument("--new-tokens", type=int, default=256, help="tokens generated per request")
    args = parser.parse_args()
    args.dtype = resolve_dtype(args.dtype)
    print(startup_line(args.dtype), flush=True)
    torch.set_num_threads(args.threads)
    new_tokens = 16 if args.quick else args.new_tokens
    batch_sizes = [1, 8, 32]
    weights = load_model(None, args.dtype)
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(weights.hf_dir), dtype=getattr(torch, args.dtype))
    engine = Engine(EngineConfig(dtype=args.dtype, max_num_seqs=64), weights)
    prompts = chat_prompts(engine, max(batch_sizes))
    engine_run(engine, prompts[:2], 4)  # warm-up
    result: dict[str, object] = {
        **result_tags(args.dtype),
        "threads": args.threads,
        "new_tokens": new_tokens,
    }
    for batch in batch_sizes:
        tok_s, step_ms = engine_run(engine, prompts[:batch], new_tokens)
        result[f"engine_tok_s_bs{batch}"] = round(tok_s, 1)
        result[f"step_ms_bs{batch}"] = round(step_ms, 1)
        if batch != 8:
            hf_tok_s = hf_tokens_per_s(
                hf, prompts[:batch], new_tokens, weights.config.eos_token_ids[0]
            )
            result[f"hf_tok_s_bs{batch}"] = round(hf_tok_s, 1)
            result[f"speedup_vs_hf_bs{batch}"] = round(tok_s / hf_tok_s, 2)
        print(json.dumps(result), flush=True)
    result["kv_mb_per_1k_tokens"] = round(engine.kv_bytes_per_token * 1000 / 2**20, 2)
    result["export_import_ms"] = round(export_import_ms(weights, args.dtype, 5), 1)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
