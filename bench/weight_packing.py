"""Decode step time with pre-packed GEMM weights vs plain `F.linear`, interleaved in one engine.

One engine runs a batch of real chat prompts (greedy, EOS ignored); every few steps the model
switches between its packed weights (`starserve/model/packing.py`) and none, so both sides see
the same batch, the same context lengths and the same minute of this noisy machine.

    python bench/weight_packing.py [--quick] [--dtype auto|float32|bfloat16] [--batch-sizes 8,32]

The last line printed is `RESULT {json}` with step_ms_packed_bsN, step_ms_plain_bsN and
speedup_bsN (plain / packed) for each batch size.
"""

from __future__ import annotations

import starserve  # noqa: F401  (first: a forced STARSERVE_ISA caps the libraries torch loads)

# isort: split
import argparse
import json
import statistics
import sys

import torch
from engine_throughput import chat_prompts  # bench/ is on sys.path when this script runs
from tqdm import tqdm

from starserve.engine import Engine, EngineConfig, SamplingParams
from starserve.hardware import DTYPE_CHOICES, DTYPE_HELP, resolve_dtype, result_tags, startup_line
from starserve.model import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds instead of 12 (< 1 min)")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto", help=DTYPE_HELP)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--batch-sizes", default="8,32", help="comma-separated batch sizes")
    parser.add_argument("--steps", type=int, default=6, help="steps per side per round")
    args = parser.parse_args()
    args.dtype = resolve_dtype(args.dtype)
    print(startup_line(args.dtype), flush=True)
    torch.set_num_threads(args.threads)
    rounds = 3 if args.quick else 12
    weights = load_model(None, args.dtype)
    model = weights.model
    model.pack_weights()
    packed_layers = [layer.packed for layer in model.layers]
    packed_head = model.lm_head_packed
    if packed_head is None:
        sys.exit(
            "no packed GEMM for this dtype here (PyTorch build, CPU support: see "
            "starserve.hardware, or STARSERVE_PACK=0)"
        )

    def use_packing(on: bool) -> None:
        for layer, packed in zip(model.layers, packed_layers, strict=True):
            layer.packed = packed if on else {}
        model.lm_head_packed = packed_head if on else None

    result: dict[str, object] = {**result_tags(args.dtype), "threads": args.threads}
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        engine = Engine(EngineConfig(dtype=args.dtype, max_num_seqs=batch), weights)
        params = SamplingParams(
            max_tokens=2 * rounds * args.steps + 8, temperature=0, ignore_eos=True
        )
        for number, prompt in enumerate(chat_prompts(engine, batch)):
            engine.add_request(f"r{number}", prompt, params)
        # Prefill everything first: only decode steps of the whole batch are compared.
        while len(engine.step()) < batch or engine.stats().num_waiting:
            pass
        times: dict[bool, list[float]] = {True: [], False: []}
        for _ in tqdm(range(rounds), desc=f"batch {batch}", unit="round"):
            for on in (True, False):
                use_packing(on)
                engine.step()  # first step after a switch is not counted
                for _ in range(args.steps):
                    engine.step()
                    times[on].append(1000 * engine.last_step_time_s)
        use_packing(True)
        packed, plain = statistics.median(times[True]), statistics.median(times[False])
        result[f"step_ms_packed_bs{batch}"] = round(packed, 2)
        result[f"step_ms_plain_bs{batch}"] = round(plain, 2)
        result[f"speedup_bs{batch}"] = round(plain / packed, 3)
        print(json.dumps(result), flush=True)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
