"""`starserve bench` argument parsing and per-request records."""

from __future__ import annotations

import pytest

from starserve.benchclient.client import RequestResult
from starserve.cli.bench import parse_goodput
from starserve.errors import StarserveError


def test_goodput_accepts_vllm_syntax() -> None:
    assert parse_goodput(["ttft:500", "tpot:50"]) == {"ttft": 500.0, "tpot": 50.0}
    assert parse_goodput(["ttft:500 e2el:2000"]) == {"ttft": 500.0, "e2el": 2000.0}
    assert parse_goodput([]) is None


@pytest.mark.parametrize("bad", ["ttft", "itl:5", "tpot:abc", "tpot:-1"])
def test_goodput_rejects_bad_items(bad: str) -> None:
    with pytest.raises(StarserveError, match="--goodput"):
        parse_goodput([bad])


def test_record_pads_multi_token_events_to_usage_count() -> None:
    result = RequestResult(
        success=True, send_time_s=1.0, event_times_s=[1.5, 2.0], num_output_tokens=4
    )
    record = result.record()
    assert record.token_times_s == (1.5, 2.0, 2.0, 2.0)
    assert record.ttft_s == 0.5
    failed = RequestResult(success=False, send_time_s=1.0, error="HTTP 500").record()
    assert not failed.success
