"""The machine this process runs on, as data: CPU model and features, usable cores, load, libraries.

Every benchmark result records :func:`machine_info` (a number without its machine is no claim),
and the defaults that depend on the hardware are decided here from what is detected, never from
what one development machine happened to have::

    cpu = read_cpu_info()                 # model name and flags, from /proc/cpuinfo
    cpu.has_bf16                          # BF16 dot-product units (AVX-512 BF16, AMX, Arm BF16)
    choose_amp("cpu", cpu)                # ("bf16", "the CPU has BF16 units (avx512_bf16)")
    choose_num_threads()                  # (1, "2 usable cores, 1-min load 4.65: ...")

The choosers return ``(value, reason)`` so a run's log says what ``auto`` chose and why. Their
inputs can be given (a test passes the text of another CPU's /proc/cpuinfo, or a load), so the
decision is testable without that CPU. Only the standard library is imported at module level:
torch is read from ``sys.modules`` when the caller has imported it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import os
import platform
import sys
from dataclasses import dataclass, field
from typing import Any, Optional

# CPU flags that decide which kernels are fast, as Linux names them in /proc/cpuinfo (x86 "flags",
# Arm "Features"). BF16: avx512_bf16 (Cooper Lake, Sapphire Rapids, Zen 4+), amx_bf16 (Sapphire
# Rapids+), Arm bf16. INT8 dot products: avx512_vnni / avx_vnni / amx_int8, Arm asimddp / i8mm.
FLAGS_OF_INTEREST = (
    "avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "avx_vnni",
    "amx_tile", "amx_bf16", "amx_int8", "asimddp", "i8mm", "bf16", "sve",
)
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")
# Distributions whose versions change the speed of a configuration (the probe cache keys on them).
LIBRARIES = ("torch", "onnxruntime", "onnxruntime-openvino", "onnxruntime-gpu", "openvino", "onnx", "numpy",
             "tensorrt")


@dataclass(frozen=True)
class CpuInfo:
    """Model name and feature flags of the CPU (of its first processor entry)."""

    model: str
    flags: frozenset[str] = field(default_factory=frozenset)
    architecture: str = ""

    @property
    def flags_of_interest(self) -> tuple[str, ...]:
        return tuple(f for f in FLAGS_OF_INTEREST if f in self.flags)

    @property
    def bf16_flags(self) -> tuple[str, ...]:
        return tuple(f for f in BF16_FLAGS if f in self.flags)

    @property
    def has_bf16(self) -> bool:
        """BF16 dot-product units: CPU autocast to bf16 is slower than fp32 without them."""
        return bool(self.bf16_flags)

    @property
    def has_int8_dot(self) -> bool:
        """INT8 dot-product instructions (VNNI, AMX-INT8, Arm dot product): where INT8 pays most."""
        return any(f in self.flags for f in INT8_DOT_FLAGS)


def parse_cpu_info(text: str, architecture: str = "") -> CpuInfo:
    """The first processor of a /proc/cpuinfo text (x86 ``model name``/``flags``; Arm ``Features``,
    with ``CPU part`` standing in for a model name where the kernel gives none)."""
    model, flags, part = "", None, ""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            if flags is not None and model:
                break  # the end of the first processor's block
            continue
        key, value = key.strip().lower(), value.strip()
        if key in ("model name", "hardware") and not model:
            model = value
        elif key in ("flags", "features") and flags is None:
            flags = frozenset(value.split())
        elif key == "cpu part" and not part:
            part = f"CPU part {value}"
    return CpuInfo(model=model or part or "unknown CPU", flags=flags or frozenset(), architecture=architecture)


def read_cpu_info(path: str = "/proc/cpuinfo") -> CpuInfo:
    """This machine's CPU; where ``path`` cannot be read, the model from ``platform`` and no flags."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return CpuInfo(model=platform.processor() or platform.machine() or "unknown CPU",
                       architecture=platform.machine())
    return parse_cpu_info(text, architecture=platform.machine())


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask; ``os.cpu_count`` counts the whole machine),
    reduced to the cgroup's CPU quota where one is set (a container limited to 2 CPUs of 64)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def cgroup_cpu_limit(path: str = "/sys/fs/cgroup/cpu.max") -> Optional[float]:
    """CPUs the cgroup (v2) may use, e.g. 2.0 for ``200000 100000``; None where unlimited or unknown."""
    try:
        with open(path) as f:
            return parse_cgroup_cpu_max(f.read())
    except OSError:
        return None


def parse_cgroup_cpu_max(text: str) -> Optional[float]:
    parts = text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = float(parts[0]), float(parts[1])
    except ValueError:
        return None
    return quota / period if period > 0 else None


def load_average() -> Optional[tuple[float, float, float]]:
    """The 1, 5 and 15-minute load averages (runnable processes over all CPUs); None where unknown."""
    try:
        return os.getloadavg()
    except (AttributeError, OSError):  # pragma: no cover - not Unix
        return None


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that decide inference speed (absent ones left out).

    Read from the package metadata, so nothing is imported."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    versions["python"] = platform.python_version()
    return versions


# ---- choices from detection ----------------------------------------------------------------------
def choose_amp(device_type: str, cpu: Optional[CpuInfo] = None,
               cuda_bf16_supported: Optional[bool] = None) -> tuple[str, str]:
    """``train.amp: auto``: ``("bf16" | "none", reason)``.

    bf16 autocast on the CPU only where the CPU has BF16 units (without them every matmul converts
    and emulates, several times slower than fp32); on CUDA where the GPU supports bf16 (Ampere and
    later). fp16 is never chosen: it needs a GradScaler and gains nothing over bf16 where both run.
    """
    if device_type == "cuda":
        if cuda_bf16_supported is None:
            import torch

            cuda_bf16_supported = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        if cuda_bf16_supported:
            return "bf16", "the GPU supports bf16"
        return "none", "the GPU has no bf16 support"
    cpu = cpu or read_cpu_info()
    if cpu.has_bf16:
        return "bf16", f"the CPU ({cpu.model}) has BF16 units ({', '.join(cpu.bf16_flags)})"
    return "none", f"the CPU ({cpu.model}) has no BF16 units ({'/'.join(BF16_FLAGS)}): fp32 is faster there"


def choose_num_threads(usable: Optional[int] = None, load_1min: Optional[float] = None,
                       logical_cpus: Optional[int] = None, processes: int = 1) -> tuple[int, str]:
    """``num_threads: auto``: the cores this process may use that nothing else is busy on, at least 1.

    free = min(usable, logical CPUs - 1-min load), shared by ``processes`` processes of one job
    (DDP ranks on one machine). The load counts the whole machine, so it is taken from all its
    CPUs before the cap by this process's own. Threads beyond the free cores make torch's OpenMP
    team wait at every operator for a thread another process holds (docs/training.md, "CPU threads").
    """
    usable = usable_cores() if usable is None else usable
    if load_1min is None:
        loads = load_average()
        load_1min = loads[0] if loads else 0.0
    logical = logical_cpus or os.cpu_count() or usable
    free = min(float(usable), logical - load_1min)
    threads = max(1, int(math.floor(free / max(1, processes) + 0.5)))
    per = f" / {processes} processes" if processes > 1 else ""
    reason = (f"{usable} usable cores of {logical}, 1-min load {load_1min:.2f}: "
              f"{max(free, 0.0):.1f} free{per}")
    return threads, reason


# ---- the record every benchmark carries ----------------------------------------------------------
def machine_info() -> dict[str, Any]:
    """What a measurement depends on: CPU model and flags, usable cores, load, GPU, library versions."""
    cpu = read_cpu_info()
    loads = load_average()
    info: dict[str, Any] = {
        "cpu": cpu.model,
        "cpu_flags": list(cpu.flags_of_interest),
        "cpu_bf16": cpu.has_bf16,
        "cpu_int8_dot": cpu.has_int8_dot,
        "architecture": platform.machine(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable_cores(),
        "cgroup_cpu_limit": cgroup_cpu_limit(),
        "load_average_1min": loads[0] if loads else None,
        "load_average": list(loads) if loads else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "libraries": library_versions(),
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["cuda"] = torch.version.cuda
    ort = sys.modules.get("onnxruntime")
    if ort is not None:
        info["onnxruntime"] = ort.__version__
        info["onnxruntime_providers"] = list(ort.get_available_providers())
    return info


def describe_machine(info: Optional[dict[str, Any]] = None) -> str:
    """One line for a report: ``AMD EPYC (2 of 2 cores usable; avx2, avx512f, ...; load 4.65)``."""
    info = info or machine_info()
    flags = ", ".join(info.get("cpu_flags") or []) or "no flags of interest"
    load = info.get("load_average_1min")
    load_text = f"1-min load {load:.2f}" if load is not None else "load unknown"
    gpu = f"; GPU {info['gpu']}" if info.get("gpu") else ""
    return (f"{info['cpu']} ({info['usable_cpus']} of {info['logical_cpus']} cores usable; {flags}; "
            f"{load_text}){gpu}")


def machine_fingerprint(info: Optional[dict[str, Any]] = None) -> str:
    """A digest of what makes one configuration faster than another here: CPU model and flags,
    usable cores, GPU and library versions (not the load, which changes by the minute)."""
    info = info or machine_info()
    keyed = {k: info.get(k) for k in ("cpu", "cpu_flags", "architecture", "usable_cpus", "gpu", "libraries")}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()
