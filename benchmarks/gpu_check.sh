#!/usr/bin/env bash
# The GPU check: one script, under 8 minutes on one H100/H200, run whenever a session has a GPU.
#   1. the CUDA tests (every input mixer under torch.cuda.set_sync_debug_mode("error"), fp16/bf16,
#      CPU/CUDA agreement, a training step) and the mixer contract tests;
#   2. the mixer benchmark on CUDA, every openmix call inside set_sync_debug_mode("error");
#   3. a short Fashion-MNIST training on the GPU-resident data path, reporting images/s;
#   4. the training-step cost of the model-aware and learned mixers on CUDA (time and peak memory);
#   5. PuzzleMix's mask solver and transport alone on CUDA, per grid side;
#   6. the training-step cost of the transformer mixers on a ViT-Tiny on CUDA;
#   7. Co-Mixup's batched solver on CUDA (and its quality against the official solver, on the CPU).
# Output: benchmarks/results/gpu_check_<device>.md (or under $OUT when set, as on the device machine).
# Needs openmix installed (`pip install -e ".[dev]"`, or PYTHONPATH) and, for step 3, Fashion-MNIST
# (Debian's dataset-fashion-mnist, or FMNIST_ROOT pointing at the IDX files).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore

device=$(python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))")
slug=$(echo "$device" | tr -c 'A-Za-z0-9\n' '_')
dest=${OUT:-benchmarks/results}
mkdir -p "$dest"
report="$dest/gpu_check_${slug}.md"
runs=$(mktemp -d)

{
  echo "# GPU check on $device"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%M:%SZ), openmix $(git rev-parse --short HEAD 2>/dev/null || echo '?'),"\
       "torch $(python -c 'import torch; print(torch.__version__)')"
  echo
  echo "## 1. CUDA tests"
  echo '```'
  timeout 180 python -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_mixer_contract.py 2>&1 | tail -n 15
  echo '```'
  echo
  echo "## 2. Mixer speed on CUDA (python benchmarks/mixer_speed.py --device cuda)"
  echo
  timeout 180 python benchmarks/mixer_speed.py --device cuda --markdown "$runs/speed.md" >/dev/null 2>"$runs/speed.err" \
    && cat "$runs/speed.md" || { echo "FAILED:"; echo '```'; tail -n 30 "$runs/speed.err"; echo '```'; }
  echo
  echo "## 3. Fashion-MNIST on the GPU-resident data path (openmix-train trainer.accelerator=gpu)"
  echo '```'
  timeout 240 python -m openmix.cli.train trainer.accelerator=gpu out_dir="$runs" print_table=true \
    ${FMNIST_ROOT:+data.root=$FMNIST_ROOT} 2>&1 | tail -n 25
  echo '```'
  echo
  echo "## 4. Training-step cost on CUDA (python benchmarks/step_cost.py --device cuda --repeat 10)"
  echo
  timeout 150 python benchmarks/step_cost.py --device cuda --repeat 10 --markdown "$runs/steps.md" >/dev/null \
    2>"$runs/steps.err" && cat "$runs/steps.md" || { echo "FAILED:"; echo '```'; tail -n 30 "$runs/steps.err"; echo '```'; }
  echo
  echo "## 5. PuzzleMix solver and transport on CUDA (python benchmarks/puzzlemix_solver.py --device cuda)"
  echo '```'
  timeout 60 python benchmarks/puzzlemix_solver.py --device cuda --repeats 9 2>&1 | tail -n 9
  echo '```'
  echo
  echo "## 6. Transformer mixers' step cost on CUDA (step_cost.py --model vit_tiny_patch16_224, 4-px patches)"
  echo
  timeout 120 python benchmarks/step_cost.py --device cuda --repeat 10 --model vit_tiny_patch16_224 \
    --model-kwargs '{"img_size": 32, "patch_size": 4}' --methods vanilla mixup manifoldmix automix tokenmix transmix \
    smmix sumix --markdown "$runs/vit.md" >/dev/null 2>"$runs/vit.err" \
    && cat "$runs/vit.md" || { echo "FAILED:"; echo '```'; tail -n 30 "$runs/vit.err"; echo '```'; }
  echo
  echo "## 7. Co-Mixup's solver on CUDA (python benchmarks/comixup_solver.py --device cuda)"
  echo
  timeout 120 python benchmarks/comixup_solver.py --device cuda --markdown "$runs/comixup.md" >/dev/null \
    2>"$runs/comixup.err" && cat "$runs/comixup.md" || { echo "FAILED:"; echo '```'; tail -n 30 "$runs/comixup.err"; echo '```'; }
} 2>&1 | tee "$report"
echo "wrote $report"
