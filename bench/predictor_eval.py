"""Bench: STAR against PLP, TRAIL, the prompt-only encoder and mean residual; online refresh.

Run from the project root:
    python bench/predictor_eval.py --data /work/collect/long [--refresh-data DIR]
    python bench/predictor_eval.py --quick    # the committed sample (< 1 min)
Evaluates the predictors in --models on the held-out test split of --data (by progress and
calibration, as `starserve predictor eval`), then the refresh bench (refresh_eval.py: STAR
trained on chat prompts, served math prompts, with and without online refresh). Ends with one
line `RESULT {json}` holding the issue's ratios.
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
from starserve.predictor.refresh import RefreshConfig  # noqa: E402
from starserve.predictor.refresh_eval import refresh_shift  # noqa: E402
from starserve.predictor.report import run_eval  # noqa: E402
from starserve.predictor.runtime import DEFAULT_DIR  # noqa: E402
from starserve.predictor.training import FitConfig  # noqa: E402


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 3)


def summarize(result: dict, refresh: dict | None) -> dict:
    table = result["predictors"]
    star, proxy = table["star_mlp"], table["prompt_only_minilm"]
    plp = table.get("plp")  # absent on data collected without token-entropy pools
    calibration = result["calibration"]["star_mlp"]
    return {
        "mae_ratio_star_vs_prompt_only": _ratio(star["mae"], proxy["mae"]),
        "mae_ratio_star_vs_prompt_only_from_256": _ratio(
            star["mae_from_256"], proxy["mae_from_256"]
        ),
        "mae_ratio_star_vs_plp": _ratio(star["mae"], plp["mae"]) if plp else None,
        "mae_ratio_star_vs_trail": _ratio(star["mae"], table["trail"]["mae"]),
        "calibration_max_abs_error": calibration["max_abs_error_points"],
        "refresh_mae_ratio": None if refresh is None else round(refresh["refresh_mae_ratio"], 3),
        "mae": {name: round(row["mae"], 2) for name, row in table.items()},
        "by_progress": {
            name: {k: None if v is None else round(v, 1) for k, v in row.items()}
            for name, row in result["by_progress"].items()
        },
        "calibration": calibration,
        "star_params": star["params"],
        "star_params_over_prompt_only": round(star["params"] / proxy["params"], 4),
        "star_cost_fraction_of_step": star["cost_fraction_of_step"],
        "decode_step_time_s_batch32": result["decode_step_time_s"],
        "test_split": result["test_split"],
        "refresh": refresh,
    }


def plot_refresh(refresh: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = refresh["mae_over_time"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in ("static", "refresh"):
        ax.plot(series["requests_served"], series[name], marker="o", label=name)
    ax.set_xlabel("math requests served (chat-trained STAR)")
    ax.set_ylabel("MAE of remaining tokens (window)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Use the committed sample.")
    parser.add_argument(
        "--data", type=Path, nargs="+", help="Collection directories (default: the cache's)."
    )
    parser.add_argument(
        "--refresh-data",
        type=Path,
        nargs="+",
        help="Collections with chat and math answers (default: --data).",
    )
    parser.add_argument("--models", type=Path, default=DEFAULT_DIR, help="Trained predictors.")
    parser.add_argument("--out", type=Path, default=Path("out/bench_predictor_eval"))
    args = parser.parse_args()
    data = args.data or (
        DEFAULT_DIR / "sample" if args.quick else cache_dir() / "predictor" / "collection"
    )
    test = load_dataset(data).split("test")
    dtype = test.meta.get("settings", {}).get("dtype", "float32")
    # A fresh measurement: the collection's own step times include its prefill chunks.
    step_s = measure_decode_step_s(num_steps=4 if args.quick else 12, dtype=dtype)
    result = run_eval(args.models, test, args.out, step_s, print)
    fit = FitConfig(max_epochs=15 if args.quick else 100, patience_epochs=4 if args.quick else 8)
    quick_refresh = RefreshConfig(min_new_requests=3, min_requests=3, max_epochs=10)
    refresh = refresh_shift(
        load_dataset(args.refresh_data or data),
        fit,
        quick_refresh if args.quick else RefreshConfig(),
    )
    print(f"refresh on the chat -> math shift: {json.dumps(refresh['mae_over_time'])}")
    plot_refresh(refresh, args.out / "refresh_mae_over_time.png")
    print("RESULT " + json.dumps({**summarize(result, refresh), **result_tags(dtype)}))


if __name__ == "__main__":
    main()
