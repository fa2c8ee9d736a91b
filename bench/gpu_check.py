"""The engine on a CUDA GPU: greedy equality with transformers (64 tokens), then tok/s side by side.

Runs only where PyTorch sees a GPU; elsewhere it prints `RESULT {"skipped": reason, ...}` and
exits 0. Both sides run float32 on the same device (bit-comparable greedy tokens), real
alpaca_eval chat prompts, greedy, a fixed number of new tokens (no early stop).

    python bench/gpu_check.py [--quick] [--dtype auto|float32|bfloat16] [--new-tokens N]

The last line printed is `RESULT {json}` with greedy_equal_64, engine_tok_s_bs1/bs32,
hf_tok_s_bs1/bs32, speedup_vs_hf_bs1/bs32 and the cpu, isa, dtype and gpu it ran on.
"""

from __future__ import annotations

import starserve  # noqa: F401  (first: a forced STARSERVE_ISA caps the libraries torch loads)

# isort: split
import argparse
import json
import time

import torch
from engine_throughput import chat_prompts, engine_run  # bench/ is on sys.path when run

from starserve.engine import Engine, EngineConfig, SamplingParams
from starserve.hardware import DTYPE_CHOICES, result_tags
from starserve.model import load_model


def hf_generate(
    hf: torch.nn.Module, prompts: list[list[int]], new_tokens: int, pad: int
) -> tuple[list[list[int]], float]:
    """(new token ids per prompt, tokens/s) of transformers' greedy generate, left padded."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device="cuda")
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device="cuda")
    torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        out = hf.generate(  # type: ignore[operator]
            input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
            min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad,
        )  # fmt: skip
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return out[:, width:].tolist(), len(prompts) * new_tokens / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="32 new tokens for the speed part")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default="float32",
                        help="float32 (default: greedy tokens comparable bit for bit), bfloat16")  # fmt: skip
    parser.add_argument("--new-tokens", type=int, default=256, help="tokens per request (speed)")
    args = parser.parse_args()
    dtype = "float32" if args.dtype == "auto" else args.dtype  # auto is a CPU notion
    if not torch.cuda.is_available():
        reason = f"no CUDA GPU visible to PyTorch (torch {torch.__version__})"
        print("RESULT " + json.dumps({"skipped": reason, **result_tags(dtype)}))
        return
    weights = load_model(None, dtype, "cuda")
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(weights.hf_dir), dtype=getattr(torch, dtype))
    hf = hf.to("cuda").eval()
    engine = Engine(EngineConfig(dtype=dtype, device="cuda", max_num_seqs=64), weights)  # type: ignore[arg-type]
    prompts = chat_prompts(engine, 32)
    pad = weights.config.eos_token_ids[0]
    greedy = SamplingParams(max_tokens=64, temperature=0, ignore_eos=True)
    ours = [out.new_token_ids for out in engine.generate(prompts[:8], greedy)]
    theirs = [hf_generate(hf, [p], 64, pad)[0][0] for p in prompts[:8]]  # unpadded, one by one
    result: dict[str, object] = {
        **result_tags(dtype), "gpu": torch.cuda.get_device_name(),
        "greedy_equal_64": sum(a == b for a, b in zip(ours, theirs, strict=True)),
        "greedy_prompts": len(ours),
    }  # fmt: skip
    new_tokens = 32 if args.quick else args.new_tokens
    engine_run(engine, prompts[:2], 4)  # warm-up
    for batch in (1, 32):
        tok_s, step_ms = engine_run(engine, prompts[:batch], new_tokens)
        _, hf_tok_s = hf_generate(hf, prompts[:batch], new_tokens, pad)
        result[f"engine_tok_s_bs{batch}"] = round(tok_s, 1)
        result[f"step_ms_bs{batch}"] = round(step_ms, 2)
        result[f"hf_tok_s_bs{batch}"] = round(hf_tok_s, 1)
        result[f"speedup_vs_hf_bs{batch}"] = round(tok_s / hf_tok_s, 2)
        print(json.dumps(result), flush=True)
    result["new_tokens"] = new_tokens
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
