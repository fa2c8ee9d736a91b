"""PNG plots of an experiment: TPOT CDF per policy, load spread over time, goodput vs rate."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from starserve.sim.run import SimResult


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_tpot_cdf(runs: Mapping[str, SimResult], path: Path, tpot_slo_ms: float) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, run in runs.items():
        tpots = np.sort([1000 * t for r in run.records if (t := r.tpot_s) is not None])
        if len(tpots):
            ax.plot(tpots, np.arange(1, len(tpots) + 1) / len(tpots), label=name)
    ax.axvline(tpot_slo_ms, color="grey", linestyle="--", label="TPOT SLO")
    ax.set_xscale("log")
    ax.set_xlabel("TPOT (ms)")
    ax.set_ylabel("fraction of requests")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_load_spread(runs: Mapping[str, SimResult], path: Path) -> None:
    """Max - min KV utilisation across decode instances over time."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, run in runs.items():
        util = np.asarray(run.timeline.kv_utilization)
        if util.size:
            ax.plot(run.timeline.times_s, util.max(axis=1) - util.min(axis=1), label=name, lw=1)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("KV utilisation spread (max - min)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_goodput_vs_rate(results: Mapping[str, Any], path: Path) -> bool:
    """From each policy's rate-search points; False when there are none."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    for name, entry in results["policies"].items():
        points = (entry.get("rate_search") or {}).get("points") or entry.get("sweep") or []
        if points:
            rates = [p["rate_per_s"] for p in points]
            ax.plot(rates, [p["goodput_rps"] for p in points], marker="o", label=name)
            drawn = True
    ax.set_xlabel("request rate (req/s)")
    ax.set_ylabel("goodput (req/s meeting SLOs)")
    if drawn:
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    plt.close(fig)
    return drawn


def write_plots(
    results: Mapping[str, Any], runs: Mapping[str, SimResult], out_dir: Path
) -> list[Path]:
    paths = [out_dir / "tpot_cdf.png", out_dir / "load_spread.png"]
    plot_tpot_cdf(runs, paths[0], results["slos_ms"]["tpot"])
    plot_load_spread(runs, paths[1])
    goodput = out_dir / "goodput_vs_rate.png"
    if plot_goodput_vs_rate(results, goodput):
        paths.append(goodput)
    return paths
