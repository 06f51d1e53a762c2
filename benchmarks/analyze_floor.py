"""Analyze against its floor, the network's forward pass alone, and a cold ``breastcmsl analyze`` against MONAI.

Each repeat times, interleaved, in this order:

(floor) the forward pass alone (``pipeline.analyze.forward``, the BN-folded network in the precision analyze
        uses) on case B's preprocessed input, in this process (with the worker's malloc settings, ``memory.py``);
(warm)  a warm panel Analyze of case B through a :class:`~BreastCMSLLib.panel.session.Session` on a real MRML scene
        (slicer-core): the input nodes in the scene to the result nodes in the scene, as both faces call it; the
        session's worker was started (and its model loaded) by an untimed Analyze of case A before the repeats;
(ahead) a warm panel Analyze of case B prepared ahead, as both faces do when the inputs or the model change
        (``Session.prepare``: the inputs exported, read and preprocessed in the worker, untimed, finished before the
        click), timed from ``session.analyze`` to the result nodes in the scene;
(floor) the forward pass alone again: a repeat's floor is the mean of the two around its warm Analyzes, so that a
        load that changes during the repeat moves both sides of its ratio alike;
(cold)  ``breastcmsl analyze`` of case B in a fresh process;
(monai) a fresh process that imports MONAI, builds its ResNet34 (conv1 stride 2) and runs one fp32 forward.

Stages: the warm path's export of the inputs (the ``session.analyze`` call), the worker's own stages (read,
preprocess, inference, maps, write: result.json's timings), the rest of the wait (messages, transfer), and adding
the result nodes; the cold path's stages from its result.json and the remainder (process start, imports, waiting
for the model, which loads while the volumes are read and preprocessed); MONAI's import, build and forward; the CPU
seconds (user + system) of both fresh processes and the load average after each repeat. Prints medians, the ratios
warm / floor, ahead / floor and cold / MONAI (medians and per repeat), the CPU model and ISA, the precision used, and
the peak resident memory of the worker and of the CLI.

    python benchmarks/analyze_floor.py [--repeats 5] [--no-bf16] [--work DIR] [--shape I J K --input-size I J K]

``--no-bf16`` sets ``BREASTCMSL_BF16=0`` for this process, the worker and the CLI: float32 everywhere, as on a CPU
without native bf16. The default size is the paper's (input 340 x 220 x 128, phantom cases of 360 x 232 x 120
voxels, an untrained full-width model).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from a source checkout too (subprocesses start in ROOT)
MONAI_COLD = """
import json, sys, time
t0 = time.perf_counter()
import torch
from monai.networks.nets import resnet34
t1 = time.perf_counter()
shape = [int(n) for n in sys.argv[1:4]]
net = resnet34(spatial_dims=3, n_input_channels=6, conv1_t_stride=2, num_classes=1).eval()
x = torch.rand(1, 6, *shape)
t2 = time.perf_counter()
with torch.inference_mode():
    net(x)
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "build_s": t2 - t1, "forward_s": t3 - t2}))
"""
WORKER_STAGES = ("read_s", "preprocess_s", "inference_s", "maps_s", "write_s")


def cpu_description() -> str:
    """The CPU model, its bf16/AMX/AVX flags and torch's kernel level."""
    import torch

    model, flags = platform.processor() or "?", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    return (f"{model}, {os.cpu_count()} cores, flags {' '.join(isa) or '?'}, torch kernels "
            f"{torch.backends.cpu.get_cpu_capability()}, oneDNN bf16 {torch.ops.mkldnn._is_mkldnn_bf16_supported()}")


def peak_rss_mib(pid: int) -> float:
    """A live process's peak resident memory (VmHWM), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# Linux starts a process's peak-memory record (ru_maxrss) at its parent's peak when it is forked, so a child of this
# large process would report at least this process's size: the children are started by this small process, which
# reports each one's own wall time, peak and CPU time in its last stderr line.
SPAWN = """
import os, subprocess, sys, time
t0 = time.perf_counter()
child = subprocess.Popen(sys.argv[1:])
_, status, usage = os.wait4(child.pid, 0)
seconds = time.perf_counter() - t0
print(f"{seconds} {usage.ru_maxrss} {usage.ru_utime + usage.ru_stime}", file=sys.stderr)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_child(cmd: list[str], env: dict) -> tuple[float, float, str, float]:
    """Run ``cmd`` (through :data:`SPAWN`); return its wall seconds, its own peak resident memory in MiB, its
    stdout and its CPU seconds (user and system, all its threads)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.run([sys.executable, "-c", SPAWN, *cmd], stdout=out, stderr=err, cwd=ROOT, env=env,
                               text=True, check=False)
        out.seek(0)
        err.seek(0)
        errors = err.read()
        if child.returncode:
            raise RuntimeError(f"{cmd[:4]} failed:\n{errors}")
        seconds, peak_kib, cpu = errors.strip().splitlines()[-1].split()
        return float(seconds), int(peak_kib) / 1024, out.read(), float(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--work", type=Path, default=None, help="folder for the phantom cases and the model")
    parser.add_argument("--no-bf16", action="store_true", help="float32 everywhere (BREASTCMSL_BF16=0)")
    parser.add_argument("--shape", type=int, nargs=3, default=None, help="phantom size (default: synth's)")
    parser.add_argument("--spacing", type=float, nargs=3, default=None, help="phantom spacing, mm")
    parser.add_argument("--input-size", type=int, nargs=3, default=(340, 220, 128))
    parser.add_argument("--width-factor", type=float, default=1.0)
    args = parser.parse_args()
    if args.no_bf16:
        os.environ["BREASTCMSL_BF16"] = "0"  # before anything decides the precision
    env = dict(os.environ)

    import slicer
    import torch

    from BreastCMSLLib.memory import keep_freed_memory
    from BreastCMSLLib.network.modelfile import load_model
    from BreastCMSLLib.panel.session import Session
    from BreastCMSLLib.pipeline.analyze import forward
    from BreastCMSLLib.pipeline.preprocess import load_case, prepare

    work = (args.work or Path(tempfile.mkdtemp(prefix="bench-floor-"))).resolve()
    cli = [sys.executable, "-m", "BreastCMSLLib.cli"]
    cases = {name: work / f"case_{name}" for name in ("A", "B")}
    for seed, case in enumerate(cases.values(), start=1):
        if not case.exists():
            extra = [*(["--shape", *map(str, args.shape)] if args.shape else []),
                     *(["--spacing", *map(str, args.spacing)] if args.spacing else [])]
            subprocess.run([*cli, "synth", "--out", str(case), "--seed", str(seed), "--malignant", *extra],
                           check=True, capture_output=True, cwd=ROOT)
    model = work / "model.safetensors"
    if not model.exists():
        subprocess.run([*cli, "init-model", "--out", str(model), "--input-size", *map(str, args.input_size),
                        "--width-factor", str(args.width_factor)], check=True, capture_output=True, cwd=ROOT)

    keep_freed_memory()  # the worker's and analyze's malloc settings (memory.py): the floor at its best
    device = torch.device("cpu")
    loaded = load_model(model)
    array = prepare(load_case(cases["B"]), loaded.config, loaded.name).array
    forward(loaded, array, device)  # warm-up: the inference module built, the memory mapped

    scene = slicer.vtkMRMLScene()
    session = Session(scene)
    nodes = {name: session.load_case_folder(case) for name, case in cases.items()}
    worker_stages: list[dict] = []
    add_result = session.add_result

    def timed_add_result(case, reference, out_dir):
        worker_stages.append(json.loads((Path(out_dir) / "result.json").read_text())["timings"])
        t0 = time.perf_counter()
        result = add_result(case, reference, out_dir)
        worker_stages[-1]["add_result_s"] = time.perf_counter() - t0
        return result

    session.add_result = timed_add_result
    session.set_inputs(t1=nodes["A"]["t1"], phases=nodes["A"]["series"])
    session.analyze(model, device="cpu").wait(timeout=1800)  # the cold first Analyze: worker started, model loaded
    worker_stages.clear()

    def drop_result(result) -> None:
        """Remove a result's nodes (untimed): the scene, and this process's memory in which the floor runs, stay
        the size of one result instead of growing by two results per repeat."""
        for role, node_id in result.nodes.items():
            node = scene.GetNodeByID(node_id) if node_id and role != "reference" else None
            if node is not None:
                display = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
                for removed in (*display, node):
                    scene.RemoveNode(removed)

    def timed_analyze(prepared: bool) -> tuple[float, float, object, dict]:
        """A warm Analyze of case B, from ``session.analyze`` to the result nodes in the scene (``prepared``: after
        ``session.prepare`` has finished, untimed): its seconds, those of the ``session.analyze`` call, the job and
        the worker's stages (with ``prepare_s``: ``session.prepare`` until the worker's ``PREPARED``)."""
        session.set_inputs(t1=nodes["B"]["t1"], phases=nodes["B"]["series"])
        t0 = time.perf_counter()
        if prepared:
            assert session.prepare(model, device="cpu") and session.wait_prepared(timeout=1800)
        prepare_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        job = session.analyze(model, device="cpu")
        called = time.perf_counter() - t0
        result = job.wait(timeout=1800)
        seconds = time.perf_counter() - t0
        drop_result(result)
        return seconds, called, job, {**worker_stages[-1], "prepare_s": prepare_s}

    rows: dict[str, list[float]] = {"floor": []}  # printed first

    def record(key: str, value: float) -> None:
        rows.setdefault(key, []).append(value)

    precision = ""
    def floor() -> float:
        nonlocal precision
        t0 = time.perf_counter()
        _, precision = forward(loaded, array, device)
        return time.perf_counter() - t0

    for _ in range(args.repeats):
        before = floor()

        seconds, called, job, stages = timed_analyze(prepared=False)
        record("warm", seconds)
        record("warm: export inputs (session.analyze)", called)
        for key in WORKER_STAGES:
            record(f"warm: worker {key[:-2]}", stages.get(key, 0.0))
        record("warm: add result nodes", stages["add_result_s"])
        record("warm: rest (messages, transfer, waiting)", seconds - called - stages["add_result_s"]
               - sum(stages.get(key, 0.0) for key in WORKER_STAGES))
        record("worker peak RSS MiB", peak_rss_mib(job.worker_pid))

        seconds, called, job, stages = timed_analyze(prepared=True)
        assert stages["preprocess_s"] == 0.0, "the prepared inputs were not used"
        record("ahead", seconds)
        record("ahead: the preparation before the click (untimed)", stages["prepare_s"])
        record("ahead: session.analyze (the inputs compared with their export)", called)
        for key in ("inference_s", "maps_s", "write_s"):
            record(f"ahead: worker {key[:-2]}", stages.get(key, 0.0))
        record("ahead: add result nodes", stages["add_result_s"])
        after = floor()
        record("floor", (before + after) / 2)
        record("floor: before the warm Analyze", before)
        record("floor: after the warm Analyze", after)

        out = work / "cold_out"
        seconds, rss, _, cpu = run_child([*cli, "analyze", str(cases["B"]), "--model", str(model), "--out", str(out),
                                     "--device", "cpu"], env)
        record("cold", seconds)
        timings = json.loads((out / "result.json").read_text())["timings"]
        for key in WORKER_STAGES:
            record(f"cold: {key[:-2]}", timings.get(key, 0.0))
        record("cold: rest (start, imports, waiting for the model)",
               seconds - sum(timings.get(key, 0.0) for key in WORKER_STAGES))
        record("cold: CPU seconds (user + system)", cpu)
        record("CLI peak RSS MiB", rss)

        seconds, _, printed, cpu = run_child([sys.executable, "-c", MONAI_COLD, *map(str, args.input_size)], env)
        record("monai", seconds)
        record("monai: CPU seconds (user + system)", cpu)
        for key, value in json.loads(printed.strip().splitlines()[-1]).items():
            record(f"monai: {key[:-2]}", value)
        record("load average (1 min) after the repeat", os.getloadavg()[0])
    session.close()

    med = statistics.median
    print(f"CPU: {cpu_description()}")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, precision {precision}"
          f"{' (BREASTCMSL_BF16=0)' if args.no_bf16 else ''}, input {args.input_size}, width "
          f"{args.width_factor}, repeats {args.repeats}, load average at the end {os.getloadavg()[0]:.1f}")
    for key, values in rows.items():
        unit = "MiB" if "MiB" in key else "" if key.startswith("load") else "s"
        print(f"  {key:48s} median {med(values):9.3f} {unit}   {[round(v, 3) for v in values]}")
    for label, top, bottom in (("warm / floor", "warm", "floor"), ("ahead / floor", "ahead", "floor"),
                               ("cold / MONAI", "cold", "monai")):
        paired = [a / b for a, b in zip(rows[top], rows[bottom])]
        print(f"ratio {label}: of the medians {med(rows[top]) / med(rows[bottom]):.3f}, per repeat median "
              f"{med(paired):.3f}   {[round(r, 3) for r in paired]}")


if __name__ == "__main__":
    main()
