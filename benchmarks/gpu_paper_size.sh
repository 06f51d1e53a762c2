#!/usr/bin/env bash
# Both benchmarks on one CUDA GPU at the paper's input size (6 x 340 x 220 x 128), results into $1:
#   train_s2d.json      training throughput, bf16, batch 8, exact space-to-depth conv1 (the fit defaults)
#   train_profile.txt   the profiler's operator table of two bare model steps of that run
#   analyze_gpu.txt     analyze's warm inference and whole analyze_case vs MONAI's ResNet34 forward
#   train_compile.json  training throughput with fit --compile
# Usage: bash benchmarks/gpu_paper_size.sh OUT_DIR   (from the repository root; PYTHONPATH must reach it)
set -u
out=${1:?usage: gpu_paper_size.sh OUT_DIR}
mkdir -p "$out"
py=${PYTHON:-python3}
cache=${CACHE:-/tmp/bcsl-bench-cache}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1
$py -c "import torch; print('torch', torch.__version__, 'cudnn', torch.backends.cudnn.version())" >> "$out/gpu.txt" 2>&1
train=(benchmarks/train_throughput.py --input-size 340 220 128 --batch-size 8 --device cuda --cache "$cache")
timeout 200 $py "${train[@]}" --profile "$out/train_profile.txt" > "$out/train_s2d.json" 2> "$out/train_s2d.err"
echo "train s2d: $?"
timeout 150 $py benchmarks/analyze_cpu.py --device cuda --warm-only --repeats 5 > "$out/analyze_gpu.txt" 2>&1
echo "analyze: $?"
timeout "${COMPILE_TIMEOUT:-240}" $py "${train[@]}" --compile > "$out/train_compile.json" 2> "$out/train_compile.err"
echo "train compile: $?"
