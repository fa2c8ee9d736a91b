"""Closed-form runs of decode iterations with a fixed batch ("chunks").

While a decode instance's batch does not change, iteration i (1-based) of a run that starts
with K0 KV tokens and B sequences takes `fixed(B) + g * (K0 + (i - 1) * B)` seconds (g = the
latency model's seconds per KV token), so the end of iteration i is a quadratic in i and the
number of iterations finished by time t is its inverse. One chunk replaces thousands of
iteration events; the chunk log (every chunk started, never changed once started) lets
every token's time be recovered afterwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(slots=True)
class Chunk:
    """Iterations `first_step + 1 .. first_step + num_steps` of one instance."""

    first_step: int  # the instance's completed step count when the chunk began
    start_time_s: float
    fixed_s: float  # per-iteration time independent of KV
    kv_first_s: float  # g * K0: KV-read time of the first iteration
    kv_growth_s: float  # g * B: how much each later iteration's KV read grows
    num_steps: int

    def end_time_s(self, i: int) -> float:
        """When iteration i (1-based) of the chunk ends; i = 0 gives the start."""
        return (
            self.start_time_s
            + i * (self.fixed_s + self.kv_first_s)
            + self.kv_growth_s * i * (i - 1) / 2.0
        )

    def steps_done_by(self, time_s: float) -> int:
        """How many iterations have ended by `time_s` (0..num_steps)."""
        elapsed = time_s - self.start_time_s
        if elapsed <= 0:
            return 0
        a = self.kv_growth_s / 2.0
        b = self.fixed_s + self.kv_first_s - a
        if a > 0:
            guess = int((-b + math.sqrt(b * b + 4 * a * elapsed)) / (2 * a))
        else:
            guess = int(elapsed / b) if b > 0 else self.num_steps
        # correct the float guess by at most a step or two (end_time_s inlined: a hot loop)
        num_steps = self.num_steps
        guess = max(0, min(guess, num_steps))
        start, per_step, growth = (
            self.start_time_s,
            self.fixed_s + self.kv_first_s,
            self.kv_growth_s,
        )
        while guess < num_steps and (
            start + (guess + 1) * per_step + growth * (guess + 1) * guess / 2.0 <= time_s
        ):
            guess += 1
        while guess > 0 and start + guess * per_step + growth * guess * (guess - 1) / 2.0 > time_s:
            guess -= 1
        return guess

    def boundary_after(self, time_s: float) -> int:
        """Steps to commit when interrupted at `time_s`: the ones ended plus the one running."""
        done = self.steps_done_by(time_s)
        if done < self.num_steps and self.end_time_s(done) < time_s:
            return done + 1
        return done
