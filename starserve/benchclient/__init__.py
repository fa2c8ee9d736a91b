"""A vLLM `bench serve`-compatible load generator for OpenAI-compatible servers."""

from starserve.benchclient.runner import BenchOptions, run_benchmark

__all__ = ["BenchOptions", "run_benchmark"]
