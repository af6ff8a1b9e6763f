"""Data-parallel training throughput: steps/s and images/s for 1 vs N processes, and what communication costs.

A stage-2 distillation (VGG-19 ``relu{level}_1`` teacher, random weights, slimmed to ``--width``)
trains on scikit-image's photos with the trainer the recipes use: one process, then ``--nproc``
processes under torchrun (gloo on CPU, NCCL on CUDA), the same global batch. In the N-process run
the same steps are timed a second time with DistributedDataParallel's gradient all-reduce replaced
by a no-op communication hook: the difference is the time communication adds to a step.

    python benchmarks/ddp_throughput.py                       # the table in docs/benchmarks.md
    python benchmarks/ddp_throughput.py --steps 4 --crop 64   # quick
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve()


def _noop_allreduce(state, bucket):  # noqa: ANN001, ANN202 (DDP checks the hook's real annotations; none is safe)
    """A DDP communication hook that communicates nothing (each process keeps its own gradients)."""
    future: torch.futures.Future = torch.futures.Future()
    future.set_result(bucket.buffer())
    return future


def worker(args: argparse.Namespace) -> None:
    """Runs in every process: warm-up, timed steps, and (N > 1) timed steps without communication."""
    import cdcompress
    from cdcompress.data.batches import CropSampler, skimage_photos
    from cdcompress.distill import distributed
    from cdcompress.distill.trainer import TrainConfig
    from cdcompress.models.vgg import VGGDecoder, VGGEncoder, VGGSpec

    torch.set_num_threads(args.threads)
    distributed.init_from_env(args.device)
    spec = VGGSpec.vgg19(args.level)
    torch.manual_seed(0)
    task = cdcompress.apply(VGGEncoder(spec), VGGDecoder(spec), slim=args.width, beta=10.0)
    device = torch.device(args.device if args.device != "cuda" else f"cuda:{distributed.local_rank()}")
    with tempfile.TemporaryDirectory() as scratch:
        sampler = CropSampler(skimage_photos(scratch), batch_size=args.batch, resize=args.crop + 16, crop=args.crop, seed=0)
        config = TrainConfig(steps=args.steps, lr=1e-4, log_every=args.steps, device=str(device))
        task.fit(sampler, TrainConfig(steps=2, lr=1e-4, log_every=2, device=str(device)))  # warm-up
        timings = {"with communication": _timed_fit(task, sampler, config, device)}
        if distributed.world_size() > 1:
            import cdcompress.distill.distributed as dist_module

            original = dist_module.data_parallel

            def silent(*a: object, **k: object) -> torch.nn.Module:
                wrapped = original(*a, **k)
                wrapped.register_comm_hook(None, _noop_allreduce)
                return wrapped

            dist_module.data_parallel = silent
            timings["no communication (no-op hook)"] = _timed_fit(task, sampler, config, device)
            dist_module.data_parallel = original
    if distributed.is_main():
        print(json.dumps({"world": distributed.world_size(), "timings": timings}))


def _timed_fit(task: object, sampler: object, config: object, device: torch.device) -> float:
    from cdcompress.distill import distributed

    distributed.barrier()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    task.fit(sampler, config)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def run(nproc: int, threads: int, args: argparse.Namespace) -> dict:
    forwarded = ["--worker", "--steps", str(args.steps), "--batch", str(args.batch), "--crop", str(args.crop),
                 "--level", str(args.level), "--width", str(args.width), "--threads", str(threads),
                 "--device", args.device]
    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                    f"--nproc-per-node={nproc}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(HERE.parents[1])}
    proc = subprocess.run([*launcher, str(HERE), *forwarded], capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode:
        sys.exit(f"error: the {nproc}-process run failed:\n{proc.stderr[-3000:]}")
    return json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2, help="processes of the data-parallel run")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8, help="global batch")
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--level", type=int, default=3)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--threads", type=int, default=1, help="threads per process")
    parser.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL, one GPU per process)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    load = os.getloadavg()[0]
    runs = [(1, args.threads), (args.nproc, args.threads)]
    if args.device == "cpu":
        runs.insert(1, (1, args.threads * args.nproc))  # one process on as many cores as the N-process run
    results = [(world, threads, run(world, threads, args)) for world, threads in runs]
    print(f"# DDP throughput, {datetime.date.today()}, {os.cpu_count()} CPUs, {args.device}, torch {torch.__version__}, "
          f"load {load:.1f} -> {os.getloadavg()[0]:.1f}\n")
    print(f"Stage 2 (VGG-19 relu{args.level}_1, width {args.width}), global batch {args.batch} of {args.crop}² crops, "
          f"{args.steps} steps after 2 warm-up steps\n")
    print("| processes | threads each | run | seconds | steps/s | images/s | vs 1 process, 1st row | "
          "communication share of a step |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|")
    base = results[0][2]["timings"]["with communication"]
    for world, threads, result in results:
        timings = result["timings"]
        synced = timings["with communication"]
        silent = timings.get("no communication (no-op hook)")
        share = f"{(synced - silent) / synced:.0%}" if silent else "-"
        for name, seconds in timings.items():
            print(f"| {world} | {threads} | {name} | {seconds:.2f} | {args.steps / seconds:.2f} | "
                  f"{args.steps * args.batch / seconds:.1f} | {base / seconds:.2f}x | "
                  f"{share if name == 'with communication' else ''} |")


if __name__ == "__main__":
    main()
