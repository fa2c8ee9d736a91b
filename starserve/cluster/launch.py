"""The one place Ray appears: start instance and controller actors from the plain classes.

Instances are threaded actors (their stepping thread runs beside the calls), the controller
an async actor. KV snapshots move between actors as object-store references: the
controller passes the reference a prefill (or a migration source) returned straight to the
decode instance, so the bytes never pass through the controller.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import time
import warnings
from dataclasses import dataclass
from typing import Any

from starserve.cluster.config import ClusterConfig
from starserve.cluster.controller import ClusterMetrics, Controller
from starserve.cluster.handles import CallingInstance
from starserve.cluster.policies import bind_policy
from starserve.cluster.types import (
    Handoff,
    InstanceDiedError,
    InstanceUnavailableError,
    MigrationRecord,
    StageInfo,
    WorkerConfig,
)
from starserve.cluster.worker import InstanceWorker
from starserve.errors import StarserveError
from starserve.mechanism.placement import PrefillPlacer
from starserve.paths import REPO_ROOT

log = logging.getLogger(__name__)

MAX_ACTOR_CONCURRENCY = 1024  # blocking prefill calls wait in actor threads
RESTART_POLL_S = 0.5  # how often a restart asks whether the new actor process is up
# A crashed instance's new process waits this long before it builds its engine: the
# failover of its requests onto the survivors (a burst of re-prefills, about 2 s on 2 CPU
# cores) then does not share the CPU with a model load, and a process that crashes again at
# once does not crash-loop. It rejoins that much later.
RESTART_BACKOFF_S = 3.0


class RayInstanceWorker(InstanceWorker):
    """The worker as a Ray actor: a restarted process backs off before building its engine."""

    def __init__(self, config: Any, weights: Any = None):
        import ray

        with warnings.catch_warnings():  # Ray's own method calls a deprecated one of Ray's
            warnings.simplefilter("ignore")
            restarted = ray.get_runtime_context().was_current_actor_reconstructed
        if restarted:
            time.sleep(RESTART_BACKOFF_S)
        super().__init__(config, weights)


class RayInstance(CallingInstance):
    """An instance actor behind the async `InstanceHandle` interface. Ray's actor-death
    errors become `InstanceDiedError`, so the controller needs no Ray to recognise them."""

    def __init__(self, actor: Any, instance_id: int):
        self.actor = actor
        self.instance_id = instance_id

    async def _await(self, ref: Any) -> Any:
        from ray.exceptions import ActorDiedError, OutOfMemoryError, RayActorError

        try:
            return await ref
        except ActorDiedError:
            raise InstanceDiedError(self.instance_id, "actor died") from None
        except (RayActorError, OutOfMemoryError) as err:  # a crash (restarting) or a hiccup
            if _has_died(self.actor):
                raise InstanceDiedError(self.instance_id, "actor restarting") from None
            raise InstanceUnavailableError(f"instance {self.instance_id}: {err}") from None

    async def _call(self, method: str, *args: Any) -> Any:
        return await self._await(getattr(self.actor, method).remote(*args))

    async def prefill(
        self, request_id: str, prompt: list[int], params: Any, generated: list[int] | None = None
    ) -> tuple[Handoff, Any]:
        handoff_ref, snapshot_ref = self.actor.prefill.options(num_returns=2).remote(
            request_id, prompt, params, generated
        )
        return await self._await(handoff_ref), snapshot_ref

    async def export_stage(
        self, request_id: str, since_stage: int | None
    ) -> tuple[StageInfo, Any] | None:
        return await self._export("export_stage", request_id, since_stage)

    async def pause_and_export(
        self, request_id: str, since_stage: int | None
    ) -> tuple[StageInfo, Any] | None:
        return await self._export("pause_and_export", request_id, since_stage)

    async def _export(
        self, method: str, request_id: str, since_stage: int | None
    ) -> tuple[StageInfo, Any] | None:
        remote = getattr(self.actor, method).options(num_returns=2).remote
        info_ref, snapshot_ref = remote(request_id, since_stage)
        info = await self._await(info_ref)
        return None if info is None else (info, snapshot_ref)

    async def restart(self, kill: bool) -> None:
        """Bring a dead instance back: Ray restarts a crashed actor by itself (max_restarts);
        a hung one is killed first. Returns once the new process answers a warm-up step."""
        import ray

        if kill:
            ray.kill(self.actor, no_restart=False)
        while True:
            try:
                await self.actor.ready.remote()
                await self.actor.start.remote()
                await self.actor.warm_up.remote()
                return
            except ray.exceptions.RayActorError:  # restarting, or Ray has not seen it die yet
                if _actor_state(self.actor) == "DEAD":  # no restarts left
                    raise
                await asyncio.sleep(RESTART_POLL_S)


def _has_died(actor: Any) -> bool:
    """Whether Ray's actor table says the actor's process is gone (restarting or dead).
    False when it cannot tell; a process that was already replaced shows a new incarnation
    in its next poll, and one that never answers misses the controller's deadline."""
    return _actor_state(actor) not in (None, "ALIVE")


def _actor_state(actor: Any) -> str | None:
    """The actor's state in Ray's actor table (ALIVE, RESTARTING, DEAD...); None when it
    cannot tell (a private API: it never decides on its own)."""
    try:
        from ray._private.state import actors

        state = actors(actor_id=actor._actor_id.hex()).get("State")
    except Exception:
        return None
    return None if state is None else str(state)


class ControllerActor:
    """Builds the plain `Controller` inside its actor process from instance actor handles."""

    def __init__(self, prefill: list[Any], decode: list[Any], config: ClusterConfig):
        import ray

        prefill_ids = range(len(prefill))
        decode_ids = range(len(prefill), len(prefill) + len(decode))
        self.controller = Controller(
            prefill=[RayInstance(a, i) for a, i in zip(prefill, prefill_ids, strict=True)],
            decode=[RayInstance(a, i) for a, i in zip(decode, decode_ids, strict=True)],
            policy=bind_policy(config.policy),
            poll_interval_s=config.poll_interval_ms / 1000,
            migration=dataclasses.replace(
                config.migration_config(),
                stage_timeout_s=config.migration_stage_timeout_s,
                pause_timeout_s=config.migration_pause_timeout_s,
            ),
            placer=PrefillPlacer.named(config.prefill_placement),
            max_concurrent_migrations=config.max_concurrent_migrations,
            instance_timeout_s=config.instance_timeout_s,
            place_timeout_s=config.place_timeout_s,
            failover_kv_tokens=config.failover_kv_tokens,
            # on the controller's node address, so instances on any node reach it
            liveness_host=ray.util.get_node_ip_address() if config.liveness_connections else None,
        )

    async def start(self) -> None:
        import starserve.engine  # noqa: F401  (warm: requests carry its SamplingParams)

        await self.controller.start()

    async def submit(self, request_id: str, prompt: list[int], params: Any) -> None:
        await self.controller.submit(request_id, prompt, params)

    async def resume(
        self, request_id: str, prompt: list[int], generated: list[int], params: Any
    ) -> None:
        await self.controller.resume(request_id, prompt, generated, params)

    async def wait_lost(self, timeout_s: float) -> list[str]:
        return await self.controller.wait_lost(timeout_s)

    async def abort(self, request_id: str) -> None:
        await self.controller.abort(request_id)

    async def migrate(self, request_id: str, dst_instance_id: int | None = None) -> MigrationRecord:
        return await self.controller.migrate(request_id, dst_instance_id)

    async def locate(self, request_id: str) -> int:
        return await self.controller.locate(request_id)

    async def set_auto_migrate(self, enabled: bool) -> None:
        self.controller.auto_migrate = enabled

    async def metrics(self, since: int = 0) -> ClusterMetrics:
        return self.controller.metrics(since)


@dataclass(slots=True)
class Cluster:
    """Handles the server keeps: the controller actor and every instance."""

    controller: Any
    prefill: list[RayInstance]
    decode: list[RayInstance]
    config: ClusterConfig
    owns_ray: bool
    weights_ref: Any = None  # held: Ray re-reads it when it restarts a crashed instance

    @property
    def instances(self) -> list[RayInstance]:
        return [*self.prefill, *self.decode]

    def describe(self) -> list[str]:
        return [f"prefill instance {h.instance_id}" for h in self.prefill] + [
            f"decode instance {h.instance_id}" for h in self.decode
        ]

    def shutdown(self) -> None:
        import ray

        ray.kill(self.controller)  # first: it would fail the instances over as they go down
        for handle in self.instances:
            ray.kill(handle.actor)
        if self.owns_ray:
            ray.shutdown()


DEATH_INFO_WAIT_MS = 100


def _init_ray(config: ClusterConfig, address: str | None) -> bool:
    import ray

    if ray.is_initialized():
        return False
    env = {
        "env_vars": {
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])
        }
    }
    if address:
        ray.init(address=address, runtime_env=env, logging_level=logging.WARNING)
    else:
        needed = (config.num_prefill + config.num_decode) * config.num_cpus_per_instance
        ray.init(
            num_cpus=max(int(needed + 0.999), os.cpu_count() or 1),
            include_dashboard=False,
            runtime_env=env,
            logging_level=logging.WARNING,
            # a call to an actor whose process died fails after this wait for the death
            # notice (Ray's default 1000 ms), so the controller fails over that much sooner
            _system_config={"timeout_ms_task_wait_for_death_info": DEATH_INFO_WAIT_MS},
        )
    return True


def _load_weights(config: ClusterConfig) -> Any:
    """The model every instance serves, loaded (and converted from GGUF, on first use) once
    here rather than concurrently in each actor."""
    from starserve.model.loader import load_model

    overrides = config.engine_overrides()
    return load_model(overrides.get("model"), overrides.get("dtype", "float32"))


def launch_cluster(config: ClusterConfig, address: str | None = None) -> Cluster:
    """Start (or join, with `address`) Ray, the instance actors and the controller."""
    import ray

    owns_ray = _init_ray(config, address)
    weights_ref = ray.put(_load_weights(config))  # load once; every instance unpickles a copy
    num_instances = config.num_prefill + config.num_decode
    on_gpu = config.engine_overrides().get("device", "cpu") == "cuda"  # instances share 1 GPU
    worker_cls = ray.remote(RayInstanceWorker).options(
        num_cpus=config.num_cpus_per_instance,
        num_gpus=1 / num_instances if on_gpu else 0,
        max_concurrency=MAX_ACTOR_CONCURRENCY,
        max_restarts=config.instance_max_restarts,  # a crashed instance comes back (health.py)
    )
    actors: list[Any] = [
        worker_cls.remote(
            WorkerConfig(
                instance_id=i,
                engine_overrides=config.engine_overrides(),
                predictor_path=config.predictor,
                use_predictor=config.use_predictor,
                predictor_refresh=config.predictor_refresh,
            ),
            weights_ref,
        )
        for i in range(config.num_prefill + config.num_decode)
    ]
    _wait_ready(actors, owns_ray)  # every engine has run a warm-up step (engine_factory)
    ray.get([actor.start.remote() for actor in actors])
    prefill, decode = actors[: config.num_prefill], actors[config.num_prefill :]
    return Cluster(
        controller=_start_controller(prefill, decode, config),
        prefill=[RayInstance(a, i) for i, a in enumerate(prefill)],
        decode=[RayInstance(a, i + len(prefill)) for i, a in enumerate(decode)],
        config=config,
        owns_ray=owns_ray,
        weights_ref=weights_ref,
    )


def _wait_ready(actors: list[Any], owns_ray: bool) -> None:
    """Wait for every instance; one whose engine cannot step fails start-up with its reason
    (the StarserveError its constructor raised, as one line) instead of a Ray traceback."""
    import ray

    try:
        ray.get([actor.ready.remote() for actor in actors])
    except ray.exceptions.RayError as err:
        for actor in actors:
            ray.kill(actor)
        if owns_ray:
            ray.shutdown()
        found = re.findall(r"StarserveError: (.+)", str(err))
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        reason = found[-1].strip() if found else (lines[0] if lines else type(err).__name__)
        raise StarserveError(f"an instance failed to start: {reason}") from None


def _start_controller(prefill: list[Any], decode: list[Any], config: ClusterConfig) -> Any:
    import ray

    controller: Any = (
        ray.remote(ControllerActor).options(num_cpus=0).remote(prefill, decode, config)
    )
    ray.get(controller.start.remote())
    return controller


def switch_policy(cluster: Cluster, policy: str) -> Cluster:
    """The same (idle) instances under a new controller running `policy` (benches compare
    policies without reloading models); the old controller is stopped."""
    import ray

    ray.kill(cluster.controller)
    config = cluster.config.model_copy(update={"policy": policy})
    prefill = [h.actor for h in cluster.prefill]
    decode = [h.actor for h in cluster.decode]
    controller = _start_controller(prefill, decode, config)
    return dataclasses.replace(cluster, controller=controller, config=config)
