"""Check the simulator's decode-iteration model against Splitwise's measured decode step times
(`splitwise_sim/perf_model.csv`: Llama-2-70B on A100/H100 at TP 2/4/8, batch 1-64).

Our `llama3-70b` has Llama-2-70B's layer shapes; its vocabulary is 4x larger (LM head only).
Each row's mean context is prompt + generated/2. Run from the project root:
`python bench/latency_check.py [--quick]`; prints `RESULT {...}` with the median and p90
relative error per (hardware, TP).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd

from starserve.hardware import result_tags
from starserve.paths import data_dir
from starserve.sim.latency import ProfiledLatencyModel

HARDWARE = {"a100-80gb": "a100", "h100-80gb": "h100"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="same (it takes seconds)")
    parser.parse_args()
    frame = pd.read_csv(data_dir() / "splitwise_sim" / "perf_model.csv")
    frame = frame[(frame["model"] == "llama2-70b") & frame["hardware"].isin(list(HARDWARE))]
    result: dict[str, object] = {}
    all_errors = []
    for (hardware, tp), rows in frame.groupby(["hardware", "tensor_parallel"]):
        model = ProfiledLatencyModel.build("llama3-70b", HARDWARE[str(hardware)], int(tp))
        ours = []
        for row in rows.itertuples():
            context = row.prompt_size + row.token_size / 2
            step_s = (
                model.decode_fixed_s(row.batch_size)
                + row.batch_size * context * model.decode_s_per_kv_token
            )
            ours.append(1000 * step_s)
        measured = rows["token_time"].to_numpy()
        rel = (np.asarray(ours) - measured) / measured
        all_errors.extend(np.abs(rel))
        result[f"{hardware}_tp{tp}"] = {
            "rows": len(rows),
            "median_rel_error": float(np.median(rel)),
            "p90_abs_rel_error": float(np.percentile(np.abs(rel), 90)),
            "example_batch1_ms": {"ours": float(ours[0]), "measured": float(measured[0])},
        }
    result["median_abs_rel_error"] = float(np.median(all_errors))
    result.update(result_tags("none (latency model fit)"))
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
