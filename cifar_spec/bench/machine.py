"""What machine and software a measurement ran on: the CPU, the GPU, torch, the checkout."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

import cifar_spec
from cifar_spec.bench._handle import Expected


def available_cores() -> int:
    """The cores this process may run on (its affinity where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_info() -> dict:
    """The GPU's name, memory, clocks and power: torch's NVML readings, and the power limit and
    maximum clock from pynvml where it is installed."""
    props = torch.cuda.get_device_properties(0)
    info = {
        "gpu_name": props.name,
        "gpu_memory_gib": round(props.total_memory / 2**30, 1),
        "gpu_count": torch.cuda.device_count(),
    }
    for key, read in (
        ("gpu_clock_mhz", torch.cuda.clock_rate),
        ("gpu_power_draw_mw", torch.cuda.power_draw),
    ):
        try:
            info[key] = read(0)
        except Exception:  # no NVML on this machine: the figure is simply not recorded
            pass
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        info["gpu_power_limit_mw"] = pynvml.nvmlDeviceGetEnforcedPowerLimit(handle)
        info["gpu_max_sm_clock_mhz"] = pynvml.nvmlDeviceGetMaxClockInfo(
            handle, pynvml.NVML_CLOCK_SM
        )
        info["gpu_driver"] = pynvml.nvmlSystemGetDriverVersion()
    except Exception:  # pynvml absent, or no NVML: what torch read is kept
        pass
    return info


def package_version(name: str) -> str | None:
    """An installed package's version, read without importing it (torchvision takes seconds,
    and a custom torch often has no torchvision to match: a worker never imports it)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def imports() -> dict:
    """What this process imported: torch's version, git hash and file, cifar_spec's folder,
    and the PYTHONPATH it found them on, where one is set. A worker says them in its hello,
    and the controller refuses one whose torch or cifar_spec is not the one it expected."""
    found = {
        "torch": torch.__version__,
        "torch_git": getattr(torch.version, "git_version", None),
        "torch_file": torch.__file__,
        "cifar_spec": str(Path(cifar_spec.__file__).parent),
    }
    if "PYTHONPATH" in os.environ:
        found["pythonpath"] = os.environ["PYTHONPATH"]
    return found


def own_code() -> Expected:
    """What a worker of bench and gate must import: the torch and cifar_spec this command did;
    a worker that imported others would time code nobody asked to judge."""
    return Expected(imports(), "this command imported")


def describe(threads: int) -> dict:
    """The one description of a measurement's machine and software: what every worker says
    in its hello (`threads` its own), what the gate keys baselines by (`threads` the workers'),
    and what every JSON output records.

    `threads` is the torch threads per worker: a step timed at one thread and at every
    core are two measurements, not one.
    """
    info = {
        "python": sys.executable,
        "python_version": platform.python_version(),
        **imports(),
        "torchvision": package_version("torchvision"),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "threads": threads,
        "git": git_revision(),
        "cpu_model": cpu_model(),
    }
    if torch.cuda.is_available():
        info.update(gpu_info())
    return info


def git_revision() -> str | None:
    """The commit of the checkout cifar_spec is imported from, '+' when it has changes."""
    folder = Path(cifar_spec.__file__).parent
    try:
        rev = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        dirty = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "."],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if rev.returncode:
        return None  # installed from a wheel, not a checkout
    return rev.stdout.strip() + ("+" if dirty.stdout.strip() else "")
