"""The collection loop: keep the engine full, record taps, write shards as answers finish."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starserve.config import validate
from starserve.errors import StarserveError
from starserve.predictor.collect import (
    CollectSettings,
    InFlight,
    Job,
    done_request_ids,
    open_manifest,
    plan_jobs,
    to_record,
    write_shard,
)
from starserve.predictor.data import RequestRecord

FINISH_LABELS = {"stop": "stop", "length": "length"}


def make_engine(settings: CollectSettings, concurrency: int, num_threads: int | None) -> Any:
    from starserve.engine import Engine, EngineConfig

    config = {
        "dtype": settings.dtype,
        "max_num_seqs": concurrency,
        "max_model_len": settings.max_prompt_tokens + settings.max_tokens,
        "kv_cache_memory_mb": 2048,
        "num_threads": num_threads,
        # pools need every token's state; the collector keeps a tap every `interval` itself
        "hidden_state_interval": 1 if settings.pool_states else settings.interval,
        "hidden_state_middle_layer": settings.middle_layer,
        "token_entropy": settings.pool_states,
    }
    return Engine(validate(EngineConfig, config, source="collection engine"))


def _admit(engine: Any, job: Job, settings: CollectSettings) -> InFlight | None:
    from starserve.engine import SamplingParams

    tokens = engine.apply_chat_template([{"role": "user", "content": job.row.text}])
    if len(tokens) > settings.max_prompt_tokens:
        return None
    params = SamplingParams(
        max_tokens=settings.max_tokens,
        temperature=settings.temperature,
        top_p=settings.top_p,
        seed=job.seed(settings.seed),
    )
    engine.add_request(job.request_id, tokens, params)
    return InFlight(job, len(tokens))


def collect(
    prompt_files: list[Path],
    out_dir: Path,
    settings: CollectSettings,
    concurrency: int = 48,
    shard_requests: int = 64,
    num_threads: int | None = None,
    max_requests: int | None = None,
) -> dict:
    """Run (or resume) a collection into `out_dir`; returns the final manifest."""
    from tqdm import tqdm

    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = plan_jobs(prompt_files, settings)
    engine = make_engine(settings, concurrency, num_threads)
    model = str(engine.config.model or "SmolLM2-135M-Instruct (bundled GGUF)")
    manifest = open_manifest(out_dir, settings, model)
    manifest["prompt_files"] = sorted({*manifest["prompt_files"], *(p.name for p in prompt_files)})
    done = done_request_ids(out_dir)
    todo = [job for job in jobs if job.request_id not in done][:max_requests]
    if not todo:
        return manifest
    queue = iter(todo)
    inflight: dict[str, InFlight] = {}
    finished: list[tuple[RequestRecord, InFlight]] = []
    with tqdm(total=len(todo), desc="answers", unit="req") as bar:
        exhausted = False
        while inflight or not exhausted:
            while len(inflight) < concurrency and not exhausted:
                job = next(queue, None)
                if job is None:
                    exhausted = True
                    break
                flight = _admit(engine, job, settings)
                if flight is None:
                    manifest["num_skipped_long_prompts"] += 1
                    bar.update(1)
                else:
                    inflight[job.request_id] = flight
            if not inflight:
                break
            for out in engine.step():
                _record(out, inflight, finished, bar, settings.interval)
            stats = engine.stats()
            manifest["step_samples"].append([stats.num_running, round(stats.last_step_time_s, 5)])
            if len(finished) >= shard_requests:
                write_shard(out_dir, manifest, finished)
                finished = []
    write_shard(out_dir, manifest, finished)
    return manifest


def _numpy(tensor: Any) -> Any:
    return None if tensor is None else tensor.detach().to("cpu").float().numpy()


def _record(
    out: Any, inflight: dict[str, InFlight], finished: list, bar: Any, interval: int
) -> None:
    flight = inflight.get(out.request_id)
    if flight is None:
        return
    flight.add_token(
        int(out.num_generated_tokens),
        interval,
        _numpy(out.hidden_last),
        _numpy(out.hidden_middle),
        out.token_entropy,
    )
    if out.finished:
        del inflight[out.request_id]
        reason = FINISH_LABELS.get(out.finish_reason or "")
        if reason is None:
            raise StarserveError(f"request {out.request_id} ended with {out.finish_reason!r}")
        if flight.generated:
            finished.append((to_record(flight, int(out.num_generated_tokens), reason), flight))
        bar.update(1)


def measure_decode_step_s(
    batch: int = 32, num_steps: int = 12, num_threads: int | None = None, dtype: str = "float32"
) -> float:
    """Median wall time of one engine decode step with `batch` running requests (short prompts),
    in the collection's dtype, on torch's threads unless `num_threads` says otherwise."""
    import time

    from starserve.engine import Engine, EngineConfig, SamplingParams

    config = {
        "max_num_seqs": batch,
        "hidden_state_interval": 16,
        "num_threads": num_threads,
        "dtype": dtype,
    }
    engine = Engine(validate(EngineConfig, config, source="step timing engine"))
    params = SamplingParams(max_tokens=num_steps + 4, temperature=0.0, ignore_eos=True)
    for i in range(batch):
        engine.add_request(f"t{i}", f"Write a short note number {i} about rivers.", params)
    engine.step()  # prefill (all prompts fit one chunked-prefill step)
    times: list[float] = []
    while engine.has_unfinished_requests() and len(times) < num_steps:
        start = time.perf_counter()
        engine.step()
        if engine.stats().num_running == batch:
            times.append(time.perf_counter() - start)
    return float(sorted(times)[len(times) // 2]) if times else float("nan")
