"""Choice of the torch device that runs the network: CUDA when it works, else the CPU."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

AUTO_NAMES = ("auto",)
CPU_NAMES = ("cpu",)
GPU_NAMES = ("cuda", "gpu")


class DeviceError(RuntimeError):
    """The requested device cannot be used."""


def resolve_device(name: str = "auto") -> torch.device:
    """The device for `name`: "auto", "cpu", "cuda" / "gpu", or "cuda:N".

    "auto" takes the GPU only when CUDA is available and a test computation on it succeeds,
    otherwise the CPU. An explicit GPU request that cannot be met raises DeviceError.
    """
    key = str(name).strip().lower()
    if key in AUTO_NAMES:
        try:
            return _usable_gpu(None)
        except DeviceError:
            return torch.device("cpu")
    if key in CPU_NAMES:
        return torch.device("cpu")
    if key in GPU_NAMES:
        return _usable_gpu(None)
    if key.startswith("cuda:") and key[5:].isdigit():
        return _usable_gpu(int(key[5:]))
    raise DeviceError(f"unknown device {name!r}; choose 'auto', 'cpu' or 'cuda'")


def describe_device(device: torch.device) -> str:
    """One line for people: "cuda:0 (NVIDIA H100 80GB HBM3, 79.1 GiB)" or "cpu (2 threads)"."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return f"cuda:{index} ({props.name}, {props.total_memory / 2**30:.1f} GiB)"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return str(device)


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name: the first "model name" of `cpuinfo` (Linux), else what the platform
    reports, else "unknown CPU"."""
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _usable_gpu(index: int | None) -> torch.device:
    """The CUDA device `index` (default: the current one) after a test computation on it."""
    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        raise DeviceError(
            "this PyTorch build has no CUDA support (CPU only); install a CUDA build of PyTorch "
            "to use the GPU, or choose the CPU"
        )
    if not torch.cuda.is_available():
        raise DeviceError(
            "PyTorch has CUDA support but found no usable NVIDIA GPU (no GPU, no driver, or "
            "CUDA_VISIBLE_DEVICES hides it); check the driver with nvidia-smi, or choose the CPU"
        )
    count = torch.cuda.device_count()
    if index is not None and index >= count:
        raise DeviceError(
            f"there is no GPU cuda:{index}; this machine has {count} (cuda:0 to cuda:{count - 1})"
        )
    device = torch.device("cuda", torch.cuda.current_device() if index is None else index)
    try:
        probe = torch.ones(2, device=device)
        if float((probe + probe).sum().item()) != 4.0:
            raise RuntimeError("wrong result")
    except Exception as error:  # any failure here means the GPU cannot be used
        raise DeviceError(
            f"the GPU {device} failed a test computation ({error}); update the driver or choose the CPU"
        ) from error
    return device


def physical_cpu_cores() -> int:
    """Physical cores among the CPUs this process may run on (hyper-threading siblings count once);
    the logical CPU count where the topology cannot be read."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
    cores = set()
    for cpu in allowed:
        try:
            cores.add(Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text())
        except OSError:
            return max(1, len(allowed))
    return max(1, len(cores))


def use_physical_cores() -> int:
    """Set torch's CPU threads to the physical cores unless OMP_NUM_THREADS says otherwise; the count."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(physical_cpu_cores())
    return torch.get_num_threads()
