"""Training ranks as Ray actors in a placement group on the GPUs a recipe names.

The 4B recipe trains on GPUs 1 and 2 and serves the simulator on GPU 0. Locally, the run
starts Ray itself with only the training GPUs visible (``CUDA_VISIBLE_DEVICES`` set to
``trainer.gpu_ids`` for the Ray processes), reserves one bundle per rank
(``{"CPU": ray.cpus_per_rank, "GPU": 1}``, CPU only when training on the CPU) and pins rank
``i`` to bundle ``i``. With ``ray.address`` set it joins that cluster instead (multi-node) and
only disconnects at the end. :meth:`RayRankGroup.shutdown` kills the actors, removes the
placement group and stops the Ray instance it started, so nothing is left running after a run
ends, fails or is interrupted (it also runs at interpreter exit).

Each actor wraps one :class:`~userrl_plugins.backends.fsdp_backend.FSDPWorker`; the group has
the same ``call_all`` / ``shutdown`` surface as the local process group.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
from typing import Any

log = logging.getLogger(__name__)

# Calls an actor runs at once: the collective calls come one at a time from the driver, but a
# colocated rollout engine takes many requests in flight (one thread each while it waits).
ACTOR_CONCURRENCY = 256


class RankActor:
    """The body of one Ray actor: sets the torch.distributed environment, then hosts a worker."""

    def __init__(self) -> None:
        self.worker = None

    def node_address(self) -> tuple[str, int]:
        """This node's IP and a free port on it (rank 0's is the rendezvous address)."""
        import ray

        from userrl_plugins.backends.rank_processes import free_port

        ip = ray.util.get_node_ip_address()
        return ip, free_port("0.0.0.0" if ip not in {"127.0.0.1", "localhost"} else "127.0.0.1")

    def setup(self, rank: int, world: int, master: tuple[str, int], config: Any, model_dir: str,
              total_steps: int | None, threads: int) -> int:
        import torch

        from userrl_plugins.backends.fsdp_backend import FSDPWorker

        os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": "0",
                           "MASTER_ADDR": master[0], "MASTER_PORT": str(master[1])})
        torch.set_num_threads(threads)
        self.worker = FSDPWorker(config, model_dir, total_steps)
        return os.getpid()

    def run(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.worker, method)(*args, **kwargs)

    def engine_request(self, method: str, *args: Any) -> Any:
        """One request to this rank's rollout engine; many run at once (a threaded actor)."""
        return self.worker.submit_engine(method, *args).result()

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None


@contextlib.contextmanager
def _visible_gpus(gpu_ids: list[int] | None):
    """Let a locally started Ray see only the training GPUs."""
    if not gpu_ids:
        yield
        return
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpu_ids)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = before


class RayRankGroup:
    """``world`` ranks as Ray actors in one placement group; see the module docstring."""

    def __init__(self, config: Any, model_dir: str, *, world: int, use_gpus: bool,
                 total_steps: int | None = None, threads_per_rank: int = 1, ready_timeout: float = 600.0) -> None:
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from userrl_plugins.backends.fsdp_plugin import ray_settings

        settings = ray_settings(config)
        self.started_ray = False
        self.actors: list[Any] = []
        self.placement = None
        self._ray = ray
        if not ray.is_initialized():
            if settings.address:  # join: ray.shutdown() later only disconnects this driver
                ray.init(address=settings.address, log_to_driver=True)
            else:
                with _visible_gpus(config.trainer.gpu_ids if use_gpus else None):
                    ray.init(num_cpus=settings.num_cpus, num_gpus=world if use_gpus else 0,
                             include_dashboard=False, log_to_driver=True)
            self.started_ray = True
        atexit.register(self.shutdown)
        try:
            bundle = {"CPU": settings.cpus_per_rank, **({"GPU": 1} if use_gpus else {})}
            self.placement = placement_group([dict(bundle) for _ in range(world)], strategy=settings.placement_strategy)
            ray.get(self.placement.ready(), timeout=ready_timeout)
            actor_class = ray.remote(RankActor)
            for rank in range(world):
                strategy = PlacementGroupSchedulingStrategy(self.placement, placement_group_bundle_index=rank)
                self.actors.append(actor_class.options(
                    num_cpus=settings.cpus_per_rank, num_gpus=1 if use_gpus else 0,
                    scheduling_strategy=strategy, name=None, max_concurrency=ACTOR_CONCURRENCY,
                ).remote())
            master = ray.get(self.actors[0].node_address.remote())
            self.pids = ray.get([
                actor.setup.remote(rank, world, master, config, model_dir, total_steps, threads_per_rank)
                for rank, actor in enumerate(self.actors)
            ])
        except BaseException:
            self.shutdown()
            raise

    async def submit_engine(self, rank: int, method: str, *args: Any) -> Any:
        """``method(*args)`` on one rank's rollout engine, awaited without blocking the loop."""
        from ray.exceptions import RayError

        from userrl_plugins.backends.rank_processes import RankGroupError

        try:
            return await self.actors[rank].engine_request.remote(method, *args)
        except RayError as exc:
            raise RankGroupError(f"rank {rank}'s rollout engine failed: {exc}") from None

    def call_all(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        from ray.exceptions import RayError

        from userrl_plugins.backends.rank_processes import RankGroupError

        try:
            return self._ray.get([actor.run.remote(method, *args, **kwargs) for actor in self.actors])
        except RayError as exc:
            self.shutdown()
            raise RankGroupError(f"a training rank failed: {exc}") from None

    def shutdown(self) -> None:
        """Kill the actors, remove the placement group, stop the local Ray instance this group
        started (or disconnect from a joined cluster)."""
        ray = self._ray
        if not ray.is_initialized():
            return
        for actor in self.actors:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
        self.actors = []
        if self.placement is not None:
            with contextlib.suppress(Exception):
                ray.util.remove_placement_group(self.placement)
            self.placement = None
        if self.started_ray:
            ray.shutdown()
            self.started_ray = False
        with contextlib.suppress(Exception):
            atexit.unregister(self.shutdown)
