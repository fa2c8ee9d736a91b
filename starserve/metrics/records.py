"""Per-request latency records and vLLM `bench serve`'s per-request metric definitions."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """What a client (or the simulator) observed for one request.

    `token_times_s` are the arrival times of the output tokens, on the same clock as
    `send_time_s`; the number of output tokens is their count. A failed request
    (`success=False`) counts in no latency metric, as in vLLM.
    """

    send_time_s: float
    token_times_s: tuple[float, ...]
    num_prompt_tokens: int
    success: bool = True

    def __post_init__(self) -> None:
        times = self.token_times_s
        if self.success and not times:
            raise ValueError("a successful request has at least one output token")
        if any(later < earlier for earlier, later in zip(times, times[1:], strict=False)):
            raise ValueError("token_times_s must be non-decreasing")
        if times and times[0] < self.send_time_s:
            raise ValueError("the first token cannot come before the request was sent")

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_times_s)

    @property
    def ttft_s(self) -> float:
        """Time to first token: first token time − send time."""
        return self.token_times_s[0] - self.send_time_s

    @property
    def e2el_s(self) -> float:
        """End-to-end latency: last token time − send time."""
        return self.token_times_s[-1] - self.send_time_s

    @property
    def itls_s(self) -> list[float]:
        """Inter-token latencies: gaps between successive tokens."""
        times = self.token_times_s
        return [later - earlier for earlier, later in zip(times, times[1:], strict=False)]

    @property
    def tpot_s(self) -> float | None:
        """Time per output token excluding the first: (E2EL − TTFT) ÷ (n − 1); None if n <= 1."""
        if self.num_output_tokens <= 1:
            return None
        return (self.e2el_s - self.ttft_s) / (self.num_output_tokens - 1)

    @property
    def end_time_s(self) -> float:
        return self.token_times_s[-1] if self.token_times_s else self.send_time_s
