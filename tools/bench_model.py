"""Time one model's forward and forward+backward passes and measure their peak memory.

Why a fresh subprocess per configuration: on CPU the only cheap peak-memory figure is the process's high-water
RSS (`ru_maxrss`), which never goes down, so two configurations measured in one process would share a peak.
Each configuration therefore runs in its own `python tools/bench_model.py --worker ...` child, and the parent
prints one JSON object per configuration (JSON Lines on stdout).

    python tools/bench_model.py --encoder small --crop 252 518 --batch 1 2 --device cpu

The helpers at the top (`environment`, `rss_mb`, `peak_rss_mb`, `sync`, `median_seconds`, `run_workers`) are
shared with `tools/bench_train_step.py`, which imports this file as a module.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from semiseg.models.specs import encoder_spec
from semiseg.task import get_task, tasks

# ---------------------------------------------------------------------------------------------------------
# Shared measurement helpers


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; asking for CUDA without one is a user error, said in one line."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: no CUDA device is available here; use --device cpu")
    return device


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict[str, Any]:
    """What a reader needs to compare two benchmark figures: versions, device and thread count."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "device_name": name,
        "threads": torch.get_num_threads(),
    }


def rss_mb() -> float:
    """Current resident set size in MiB (Linux /proc; falls back to the high-water mark elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * resource.getpagesize() / 2**20
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()


def peak_rss_mb() -> float:
    """High-water RSS of this process in MiB (`ru_maxrss` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], Any], device: torch.device, warmup: int, iters: int) -> float:
    """Median wall time of `fn` over `iters` calls after `warmup` untimed ones (the median ignores stragglers)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class PeakMemory:
    """Peak memory of a code region: CUDA allocator peak, or on CPU the RSS high-water mark above a baseline.

    On CPU the high-water mark only rises, so regions must be measured from the cheapest to the most
    expensive within one process (forward before forward+backward); `baseline_mb` is the RSS when the object
    is made (model and inputs already allocated).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.baseline_mb = rss_mb() if device.type != "cuda" else 0.0

    @contextlib.contextmanager
    def measure(self, into: dict[str, Any], key: str):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        yield
        if self.device.type == "cuda":
            sync(self.device)
            into[f"{key}_peak_mb"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
        else:
            peak = peak_rss_mb()
            into[f"{key}_peak_rss_mb"] = round(peak, 1)
            into[f"{key}_peak_rss_delta_mb"] = round(max(peak - self.baseline_mb, 0.0), 1)


def autocast(amp: str, device: torch.device):
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def run_workers(script: Path, configs: list[list[str]], common: list[str]) -> list[dict[str, Any]]:
    """Run `script --worker <config args> <common args>` once per config; each child prints one JSON line."""
    results = []
    for args in configs:
        cmd = [sys.executable, str(script), "--worker", *args, *common]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
            results.append({"config": args, "error": tail[0]})
            continue
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return results


# ---------------------------------------------------------------------------------------------------------
# The model benchmark


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Forward and forward+backward time (median after warm-up) and peak memory of one model, "
        "one JSON object per (crop, batch) configuration."
    )
    p.add_argument(
        "--encoder", default="small", help="any model.encoder name, e.g. base, dinov3_base (default small)"
    )
    p.add_argument("--crop", type=int, nargs="+", default=[252], help="square input sides, multiples of 14")
    p.add_argument("--batch", type=int, nargs="+", default=[1], help="batch sizes")
    p.add_argument("--task", choices=sorted(tasks()), default="segmentation")
    p.add_argument("--nclass", type=int, default=None, help="classes (default: the task's, else 21)")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N")
    p.add_argument("--amp", choices=["none", "bf16"], default="none")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    patch = encoder_spec(args.encoder).patch_size
    for crop in args.crop:
        if crop % patch:
            p.error(f"--crop {crop} is not a multiple of {patch} (the encoder's patch size)")
    if args.nclass is None:
        args.nclass = get_task(args.task).nclass or 21
    return args


def bench_one(args: argparse.Namespace) -> dict[str, Any]:
    """Measure one (crop, batch) configuration in this process."""
    from semiseg.models.segmentor import build_model

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    crop, batch = args.crop[0], args.batch[0]
    torch.manual_seed(0)
    task = get_task(args.task)
    model = build_model(args.encoder, args.nclass, task.fusion).to(device)
    n_images = task.num_images
    images = tuple(torch.randn(batch, 3, crop, crop, device=device) for _ in range(n_images))
    label = torch.randint(0, args.nclass, (batch, crop, crop), device=device)
    result: dict[str, Any] = {
        "bench": "model",
        "encoder": args.encoder,
        "task": args.task,
        "crop": crop,
        "batch": batch,
        "amp": args.amp,
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        **environment(device),
        "warmup": args.warmup,
        "iters": args.iters,
    }
    memory = PeakMemory(device)
    if device.type != "cuda":
        result["baseline_rss_mb"] = round(memory.baseline_mb, 1)

    def forward() -> None:
        with torch.no_grad(), autocast(args.amp, device):
            model(*images)

    def forward_backward() -> None:
        with autocast(args.amp, device):
            loss = torch.nn.functional.cross_entropy(model(*images).float(), label)
        loss.backward()
        model.zero_grad(set_to_none=True)

    model.eval()
    with memory.measure(result, "forward"):
        result["forward_s"] = round(median_seconds(forward, device, args.warmup, args.iters), 4)
    model.train()
    with memory.measure(result, "forward_backward"):
        result["forward_backward_s"] = round(
            median_seconds(forward_backward, device, args.warmup, args.iters), 4
        )
    return result


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(bench_one(args)), flush=True)
        return
    common = [
        "--encoder", args.encoder, "--task", args.task, "--nclass", str(args.nclass), "--device", args.device,
        "--amp", args.amp, "--warmup", str(args.warmup), "--iters", str(args.iters),
    ]  # fmt: skip
    if args.threads:
        common += ["--threads", str(args.threads)]
    configs = [["--crop", str(c), "--batch", str(b)] for c, b in itertools.product(args.crop, args.batch)]
    for result in run_workers(Path(__file__).resolve(), configs, common):
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
