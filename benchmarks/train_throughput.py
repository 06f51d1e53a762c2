"""Training throughput: volumes/s of (a) the bare model step and (b) the whole trainer step, and b/a.

(a) forward + loss + backward + Adam step of the fit loop's model on one fixed input batch already on
    the device (no data path at all);
(b) the fit loop's own step: batches from the cache (device-resident or streamed through pinned
    memory), uint8 -> input conversion and augmentation on the device, conv1 layout, then (a);
also the data path of (b) alone, without the model step.

Self-contained: it writes a synthetic cache of random volumes (``Training.cache.synthetic_cache``) of
the requested size unless ``--cache`` names one. On CUDA the fit loop uses bf16 autocast,
channels_last_3d and an exact conv1 rewrite for tensor cores (``--conv1 s2d|pad|none``, Training.fastconv);
the data path runs on a side CUDA stream one batch ahead of the model step.

    python benchmarks/train_throughput.py --input-size 64 48 32 --width-factor 0.25 --device cpu
    python benchmarks/train_throughput.py --input-size 340 220 128 --batch-size 8 --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from Training.cache import synthetic_cache
from Training.fastconv import MODES
from Training.inference import prepare, run_forward
from Training.trainer import FitConfig, Trainer


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_steps(trainer: Trainer, steps: int) -> float:
    """Seconds for ``steps`` model steps on one fixed, already prepared batch."""
    index = list(range(trainer.fit.batch_size))
    index = [i % len(trainer.train_data) for i in index]
    x = prepare(trainer.train_data.gather(index), trainer.device, trainer.conv1)
    label, birads = trainer.train_data.labels_dev[index], trainer.train_data.birads_dev[index]
    trainer.model.train()
    sync(trainer.device)
    t0 = time.perf_counter()
    for _ in range(steps):
        loss, _ = run_forward(trainer.method, trainer.cfg, trainer.model, x, label, birads)
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trainer.optimizer.step()
    sync(trainer.device)
    return time.perf_counter() - t0


def trainer_steps(trainer: Trainer, steps: int, overlap: bool = True, train: bool = True) -> float:
    """Seconds for ``steps`` steps of the fit loop's data path + train_step (epochs as needed); the data
    path alone when not ``train``."""
    done, epoch = 0, 0
    sync(trainer.device)
    t0 = time.perf_counter()
    while done < steps:
        order = trainer._epoch_order(epoch)[: steps - done]
        for idx, x in trainer.prepared(order, epoch, overlap):
            if train:
                trainer.train_step(x, idx)
            done += 1
        epoch += 1
    sync(trainer.device)
    return time.perf_counter() - t0


def write_profile(trainer: Trainer, path: Path) -> None:
    """The profiler's operator table (sorted by self device time) of two bare model steps."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if trainer.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        bare_steps(trainer, 2)
    key = "self_cuda_time_total" if trainer.device.type == "cuda" else "self_cpu_time_total"
    path.write_text(prof.key_averages().table(sort_by=key, row_limit=40, max_name_column_width=70))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input-size", nargs=3, type=int, default=[64, 48, 32], metavar=("I", "J", "K"))
    ap.add_argument("--channels", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10, help="timed steps of each kind per round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--width-factor", type=float, default=1.0)
    ap.add_argument("--method", default="cmsl")
    ap.add_argument("--cases", type=int, default=0,
                    help="synthetic train cases (default: steps x batch size, so that one epoch covers a round)")
    ap.add_argument("--cache", type=Path, default=None,
                    help="cache to use; a synthetic one is written there if it has none (default: temporary)")
    ap.add_argument("--resident-gb", type=float, default=40.0, help="device-resident data budget")
    ap.add_argument("--conv1", choices=MODES, default="s2d", help="CUDA conv1 rewrite (Training.fastconv)")
    ap.add_argument("--compile", action="store_true", help="CUDA: torch.compile the network (fit --compile)")
    ap.add_argument("--profile", type=Path, default=None,
                    help="also write the torch profiler's table of two bare model steps to this file")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bcsl-bench-") as tmp:
        cache = args.cache or Path(tmp) / "cache"
        if not (cache / "cache.json").is_file():
            n_train = args.cases or args.steps * args.batch_size
            t0 = time.perf_counter()
            synthetic_cache(cache, n_train + 2 * max(1, round(0.05 * n_train)), (args.channels, *args.input_size))
            print(f"synthetic cache: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        fit = FitConfig(cache=str(cache), out=str(Path(tmp) / "run"), method=args.method, batch_size=args.batch_size,
                        device=args.device, width_factor=args.width_factor, resident_gb=args.resident_gb,
                        conv1=args.conv1, compile=args.compile)
        trainer = Trainer(fit)
        t0 = time.perf_counter()
        bare_steps(trainer, args.warmup)
        trainer_steps(trainer, args.warmup)
        warm_s = time.perf_counter() - t0
        bare, whole, serial, data = [], [], [], []
        rate = args.steps * args.batch_size
        for _ in range(args.rounds):  # interleaved rounds: a load change on the machine hits every kind
            bare.append(rate / bare_steps(trainer, args.steps))
            whole.append(rate / trainer_steps(trainer, args.steps))
            data.append(rate / trainer_steps(trainer, args.steps, train=False))
            if trainer.device.type == "cuda":
                serial.append(rate / trainer_steps(trainer, args.steps, overlap=False))
        a, b = statistics.median(bare), statistics.median(whole)
        if args.profile:
            write_profile(trainer, args.profile)
        device = trainer.device
        result = {
            "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                       else f"cpu ({torch.get_num_threads()} threads)"),
            "input": [args.channels, *args.input_size], "batch_size": args.batch_size, "steps": args.steps,
            "width_factor": args.width_factor, "method": args.method,
            "precision": "bf16 autocast, channels_last_3d" if device.type == "cuda" else "fp32",
            "conv1": trainer.conv1, "compiled": args.compile,
            "data_resident_on_device": trainer.train_data.resident is not None,
            "warmup_s": round(warm_s, 2),
            "rounds": args.rounds, "bare_model_vol_per_s": a, "trainer_vol_per_s": b, "ratio_trainer_to_bare": b / a,
            "bare_rounds": bare, "trainer_rounds": whole,
            "trainer_without_overlap_vol_per_s": statistics.median(serial) if serial else None,
            "data_path_alone_vol_per_s": statistics.median(data),
        }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
