"""Bench: the shipped STAR predictor against its baselines on held-out prompts.

Run from the project root:
    python bench/predictor_eval.py            # the full collected set (test split)
    python bench/predictor_eval.py --quick    # the committed sample (< 1 min)
Ends with one line `RESULT {json}` holding each predictor's MAE and the issue's target ratios.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from starserve.hardware import result_tags  # noqa: E402
from starserve.paths import cache_dir  # noqa: E402
from starserve.predictor.collect_run import measure_decode_step_s  # noqa: E402
from starserve.predictor.data import load_dataset  # noqa: E402
from starserve.predictor.report import run_eval  # noqa: E402
from starserve.predictor.runtime import DEFAULT_DIR  # noqa: E402


def summarize(result: dict) -> dict:
    table = result["predictors"]
    star, proxy, trail = table["star_mlp"], table["prompt_only_minilm"], table["trail"]
    best_trail = min(trail["mae"], table["trail_log_bins"]["mae"])
    return {
        "mae": {name: round(row["mae"], 2) for name, row in table.items()},
        "mae_per_request": {name: round(row["mae_per_request"], 2) for name, row in table.items()},
        "star_over_prompt_only": round(star["mae"] / proxy["mae"], 3),
        "star_over_trail": round(star["mae"] / trail["mae"], 3),
        "star_over_best_trail_variant": round(star["mae"] / best_trail, 3),
        "star_over_mean_residual": round(star["mae"] / table["mean_residual"]["mae"], 3),
        "star_params": star["params"],
        "star_params_over_prompt_only": round(star["params"] / proxy["params"], 4),
        "star_cost_us": round(star["cost_us"], 1),
        "star_cost_fraction_of_step": star["cost_fraction_of_step"],
        "decode_step_time_s_batch32": result["decode_step_time_s"],
        "star_quantile_calibration": result["star_quantile_calibration"],
        "noise_floor": result["noise_floor"],
        "test_split": result["test_split"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Use the committed sample.")
    parser.add_argument("--data", type=Path, help="Collection directory (default: the cache's).")
    parser.add_argument("--models", type=Path, default=DEFAULT_DIR, help="Trained predictors.")
    parser.add_argument("--out", type=Path, default=Path("out/bench_predictor_eval"))
    args = parser.parse_args()
    data = args.data or (
        DEFAULT_DIR / "sample" if args.quick else cache_dir() / "predictor" / "collection"
    )
    test = load_dataset(data).split("test")
    # A fresh measurement: the collection's own step times include its prefill chunks.
    dtype = test.meta.get("settings", {}).get("dtype", "float32")
    step_s = measure_decode_step_s(dtype=dtype)
    result = run_eval(args.models, test, args.out, step_s, print)
    print("RESULT " + json.dumps({**summarize(result), **result_tags(dtype)}))


if __name__ == "__main__":
    main()
