"""Analyze vs MONAI's ResNet34 (conv1 stride 2) at the paper's input size, with an untrained full-size model.

(a) cold, as a user meets it: `breastcmsl analyze` on a phantom case in a fresh process, against a fresh
    process that builds the MONAI network and runs one fp32 forward pass;
(b) warm: analyze's inference step in-process, against a warm MONAI fp32 forward.
Both sides run in the same invocation, interleaved; prints medians and the two ratios (target <= 0.8).

    python benchmarks/analyze_cpu.py [--repeats 3] [--device cpu] [--work DIR]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from a source checkout too (subprocesses start in ROOT)
INPUT = (340, 220, 128)
MONAI_COLD = f"""
import sys, torch
from monai.networks.nets import resnet34
device = torch.device(sys.argv[1])
net = resnet34(spatial_dims=3, n_input_channels=6, conv1_t_stride=2, num_classes=1).eval().to(device)
x = torch.rand(1, 6, {INPUT[0]}, {INPUT[1]}, {INPUT[2]}, device=device)
with torch.inference_mode():
    net(x)
if device.type == "cuda":
    torch.cuda.synchronize()
"""


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", type=Path, default=None, help="folder for the phantom case and model")
    parser.add_argument("--warm-only", action="store_true", help="skip (a), the fresh-process comparison")
    args = parser.parse_args()

    import torch
    from monai.networks.nets import resnet34

    from BreastCMSLLib.network.modelfile import load_model
    from BreastCMSLLib.pipeline.analyze import analyze_case, forward, select_device
    from BreastCMSLLib.pipeline.preprocess import load_case

    work = (args.work or Path(tempfile.mkdtemp(prefix="bench-analyze-"))).resolve()
    case, model = work / "case", work / "model.safetensors"
    cli = [sys.executable, "-m", "BreastCMSLLib.cli"]
    if not case.exists():
        subprocess.run([*cli, "synth", "--out", str(case), "--seed", "1", "--malignant"], check=True,
                       capture_output=True, cwd=ROOT)
    if not model.exists():
        subprocess.run([*cli, "init-model", "--out", str(model)], check=True, capture_output=True, cwd=ROOT)

    cold_ours, cold_monai = [], []
    for r in range(0 if args.warm_only else args.repeats):
        cold_ours.append(timed([*cli, "analyze", str(case), "--model", str(model), "--out", str(work / f"out{r}"),
                                "--device", args.device]))
        cold_monai.append(timed([sys.executable, "-c", MONAI_COLD, args.device]))

    device = select_device(args.device)
    loaded = load_model(model)
    inputs = load_case(case)
    analysis = analyze_case(inputs, loaded, device=args.device)  # warm-up (and the preprocessed array)
    array = analysis.prep.array
    net = resnet34(spatial_dims=3, n_input_channels=6, conv1_t_stride=2, num_classes=1).eval().to(device)
    x = torch.from_numpy(array).unsqueeze(0).to(device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    with torch.inference_mode():
        net(x)
    warm_ours, warm_monai, warm_total = [], [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        forward(loaded, array, device)
        sync()
        warm_ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with torch.inference_mode():
            net(x)
        sync()
        warm_monai.append(time.perf_counter() - t0)
        warm_total.append(sum(analyze_case(inputs, loaded, device=args.device).timings.values()))

    med = statistics.median
    if device.type == "cuda":  # a fairer GPU anchor too: MONAI under the same bf16 + channels_last_3d
        net_cl = net.to(memory_format=torch.channels_last_3d)
        x_cl = x.contiguous(memory_format=torch.channels_last_3d)
        bf16 = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
                net_cl(x_cl)
            sync()
            bf16.append(time.perf_counter() - t0)
        print(f"    MONAI bf16 channels_last forward median {med(bf16) * 1e3:.1f} ms")
    print(f"device: {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"threads {torch.get_num_threads()}, input 6x{INPUT[0]}x{INPUT[1]}x{INPUT[2]}, repeats {args.repeats}")
    if cold_ours:
        print(f"(a) cold  analyze process  median {med(cold_ours):7.2f} s   {[round(t, 2) for t in cold_ours]}")
        print(f"    cold  MONAI process    median {med(cold_monai):7.2f} s   {[round(t, 2) for t in cold_monai]}")
        print(f"    ratio (a) = {med(cold_ours) / med(cold_monai):.3f}")
    print(f"(b) warm  analyze inference median {med(warm_ours):7.3f} s   {[round(t, 3) for t in warm_ours]}")
    print(f"    warm  MONAI forward     median {med(warm_monai):7.3f} s   {[round(t, 3) for t in warm_monai]}")
    print(f"    ratio (b) = {med(warm_ours) / med(warm_monai):.3f}")
    print(f"    (whole analyze_case warm, preprocessing + maps included: median {med(warm_total):.3f} s)")


if __name__ == "__main__":
    main()
