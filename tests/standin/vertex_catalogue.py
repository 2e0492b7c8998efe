"""Vertex AI's machine types, accelerator types and the pairings it accepts, for jobs and deployments.

Sources: "Configure compute resources for custom training" (machine types, and the GPU table of
which accelerator and how many each machine family takes),
https://cloud.google.com/vertex-ai/docs/training/configure-compute, and the AcceleratorType enum,
https://cloud.google.com/vertex-ai/docs/reference/rest/v1/MachineSpec#acceleratortype (the
numbers are the enum values the SDK sends). Online prediction accepts, besides, the smaller sizes
listed in "Configure compute resources for inference",
https://cloud.google.com/vertex-ai/docs/predictions/configure-compute (`PREDICTION_MACHINES`).
Only the families below are known to the stand-in: an unknown machine type, an accelerator on a
family that takes none, a wrong count, or a GPU of another family answers 400 INVALID_ARGUMENT as
Vertex does.
"""

from __future__ import annotations

from typing import Any

from tests.standin.server import ApiError

ACCELERATORS = {
    0: "ACCELERATOR_TYPE_UNSPECIFIED",
    2: "NVIDIA_TESLA_P100",
    3: "NVIDIA_TESLA_V100",
    4: "NVIDIA_TESLA_P4",
    5: "NVIDIA_TESLA_T4",
    8: "NVIDIA_TESLA_A100",
    9: "NVIDIA_A100_80GB",
    11: "NVIDIA_L4",
    13: "NVIDIA_H100_80GB",
}
_BY_NAME = {name: number for number, name in ACCELERATORS.items()}


def _family(prefix: str, sizes: tuple[int | str, ...]) -> list[str]:
    return [f"{prefix}-{size}" for size in sizes]


_N1_GPUS = {
    "NVIDIA_TESLA_T4": (1, 2, 4),
    "NVIDIA_TESLA_V100": (1, 2, 4, 8),
    "NVIDIA_TESLA_P4": (1, 2, 4),
    "NVIDIA_TESLA_P100": (1, 2, 4),
}
# machine type -> {accelerator name: the counts it takes}; an empty mapping takes no accelerator.
MACHINES: dict[str, dict[str, tuple[int, ...]]] = {}
for _name in (
    _family("e2-standard", (4, 8, 16, 32))
    + _family("e2-highmem", (2, 4, 8, 16))
    + _family("e2-highcpu", (16, 32))
    + _family("n2-standard", (4, 8, 16, 32, 48, 64, 80))
    + _family("n2-highmem", (2, 4, 8, 16, 32, 48, 64, 80))
    + _family("n2-highcpu", (16, 32, 48, 64, 80))
    + _family("c2-standard", (4, 8, 16, 30, 60))
):
    MACHINES[_name] = {}
for _name in (
    _family("n1-standard", (4, 8, 16, 32, 64, 96))
    + _family("n1-highmem", (2, 4, 8, 16, 32, 64, 96))
    + _family("n1-highcpu", (16, 32, 64, 96))
):
    MACHINES[_name] = dict(_N1_GPUS)
for _n in (1, 2, 4, 8):
    MACHINES[f"a2-highgpu-{_n}g"] = {"NVIDIA_TESLA_A100": (_n,)}
    MACHINES[f"a2-ultragpu-{_n}g"] = {"NVIDIA_A100_80GB": (_n,)}
MACHINES["a2-megagpu-16g"] = {"NVIDIA_TESLA_A100": (16,)}
MACHINES["a3-highgpu-8g"] = {"NVIDIA_H100_80GB": (8,)}
for _size, _gpus in ((4, 1), (8, 1), (12, 1), (16, 1), (24, 2), (32, 1), (48, 4), (96, 8)):
    MACHINES[f"g2-standard-{_size}"] = {"NVIDIA_L4": (_gpus,)}


PREDICTION_MACHINES: dict[str, dict[str, tuple[int, ...]]] = dict(MACHINES)
for _name in ("n1-standard-2", "n1-highcpu-2", "n1-highcpu-4", "n1-highcpu-8"):
    PREDICTION_MACHINES[_name] = dict(_N1_GPUS)
for _name in (
    "n2-standard-2",
    "n2-highcpu-2",
    "n2-highcpu-4",
    "n2-highcpu-8",
    "e2-standard-2",
    "e2-highcpu-2",
    "e2-highcpu-4",
    "e2-highcpu-8",
):
    PREDICTION_MACHINES[_name] = {}


def check_machine_spec(
    spec: dict[str, Any], field: str, catalogue: dict[str, dict[str, tuple[int, ...]]] = MACHINES
) -> None:
    """400 INVALID_ARGUMENT unless `spec` (a MachineSpec as sent) names a valid pairing."""
    machine = spec.get("machineType") or ""
    if machine not in catalogue:
        raise ApiError(400, f'{field}.machine_type "{machine}" is not supported.', "INVALID_ARGUMENT")
    raw = spec.get("acceleratorType", 0)
    accelerator = ACCELERATORS.get(raw) if isinstance(raw, int) else raw if raw in _BY_NAME else None
    if accelerator is None:
        raise ApiError(400, f"{field}.accelerator_type {raw!r} is not supported.", "INVALID_ARGUMENT")
    count = int(spec.get("acceleratorCount") or 0)
    if accelerator == "ACCELERATOR_TYPE_UNSPECIFIED":
        if count:
            raise ApiError(
                400,
                f"{field}.accelerator_count is {count} but no accelerator_type is set.",
                "INVALID_ARGUMENT",
            )
        if machine.startswith(("a2-", "a3-", "g2-")):
            raise ApiError(
                400,
                f'Machine type "{machine}" requires accelerators: set {field}.accelerator_type and '
                "accelerator_count.",
                "INVALID_ARGUMENT",
            )
        return
    allowed = catalogue[machine].get(accelerator)
    if allowed is None:
        raise ApiError(
            400,
            f'Accelerator "{accelerator}" is not supported for machine type "{machine}".',
            "INVALID_ARGUMENT",
        )
    if count not in allowed:
        raise ApiError(
            400,
            f'Machine type "{machine}" takes {" or ".join(map(str, allowed))} "{accelerator}" '
            f"accelerators, not {count}.",
            "INVALID_ARGUMENT",
        )
