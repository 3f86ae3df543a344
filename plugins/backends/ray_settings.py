"""The fsdp backend's recipe section ``ray.*``: whether its ranks run as Ray actors, and where
(registered by the fsdp plugin with ``register_settings``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class RayConfig(BaseModel):
    """Ray cluster and placement of the fsdp backend's ranks."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    enabled: bool | None = Field(
        None, description="Run the fsdp backend's ranks as Ray actors; default: yes on GPUs, local processes on CPU."
    )
    cpu_ranks: int = Field(2, ge=1, description="fsdp ranks when training on the CPU (gloo), e.g. to test sharding.")
    address: str | None = Field(
        None, description="Join an existing Ray cluster (e.g. 'ray://head:10001' or 'auto'); unset: the run starts "
        "a local Ray instance and stops it at the end."
    )
    num_cpus: int | None = Field(None, ge=1, description="CPUs for a local Ray instance (default: all).")
    cpus_per_rank: int = Field(1, ge=1, description="CPUs reserved for each training rank's actor.")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="Ray placement-group strategy for the training ranks."
    )
