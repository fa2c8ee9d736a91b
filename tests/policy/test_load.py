"""The STAR load measures against brute-force step-by-step evaluation."""

from __future__ import annotations

import math
import random

from starserve.policy.load import future_profile, overflow_steps, peak_tokens


def brute(items: list[tuple[float, float]], capacity: float, base: float) -> tuple[float, float]:
    horizon = int(max((m for _, m in items), default=0)) + 2
    peak, overflow = base + sum(c for c, _ in items), math.inf
    for t in range(horizon):
        tokens = base + sum(c + t for c, m in items if m > t)
        peak = max(peak, tokens)
        if tokens > capacity and overflow == math.inf:
            overflow = t
    return peak, overflow


def test_future_profile_matches_brute_force() -> None:
    rng = random.Random(0)
    checked = 0
    for _ in range(300):
        items = [
            (float(rng.randint(1, 300)), float(rng.randint(1, 200)))
            for _ in range(rng.randint(1, 8))
        ]
        capacity = float(rng.randint(100, 3000))
        base = float(rng.randint(0, 50))
        peak, overflow = future_profile(items, capacity, base)
        want_peak, want_overflow = brute(items, capacity, base)
        # integer steps: K(t) is checked at whole steps, the formula at the exact crossing
        assert want_peak - len(items) <= peak <= want_peak + len(items)
        if want_overflow == math.inf:
            # the exact crossing may fall in the last fractional step before a finish
            assert overflow == math.inf or any(m - 1 <= overflow <= m for _, m in items)
        else:
            checked += 1
            assert want_overflow - 1 <= overflow <= want_overflow
        assert peak == peak_tokens(items, base)
        assert overflow == overflow_steps(items, capacity, base)
    assert checked > 50


def test_cluster_profiles_match_scalar_profile() -> None:
    import numpy as np

    from starserve.policy.vector import cluster_profiles

    rng = random.Random(1)
    for _ in range(100):
        groups = [
            [
                (float(rng.randint(1, 300)), float(rng.randint(0, 200)))
                for _ in range(rng.randint(0, 6))
            ]
            for _ in range(rng.randint(1, 7))
        ]
        assert groups, "at least one instance"
        capacities = np.array([float(rng.randint(50, 1500)) for _ in groups])
        bases = np.array([float(rng.randint(0, 40)) for _ in groups])
        current, peak, overflow = cluster_profiles(groups, capacities, bases)
        for i, items in enumerate(groups):
            want_peak, want_overflow = future_profile(items, capacities[i], bases[i])
            assert current[i] == bases[i] + sum(c for c, _ in items)
            assert peak[i] == want_peak
            assert overflow[i] == want_overflow
