#!/usr/bin/env bash
# Issue 7's GPU checks in one call of a lent CUDA machine (see bench/RESULTS.md, "GPU").
#
#   run: bash bench/gpu_check.sh      (carry: .whl)
#
# That machine's python3 has torch, transformers, peft and accelerate but no registry; the
# rest travels as wheels in .whl/ (trl, datasets, dill, multiprocess, datasketch, gguf,
# liger-kernel; `pip download --no-deps` them here). The embedded model's GGUF is too big to
# carry, so the benchmark trains SmolLM2-135M's shape with random weights (speed and memory
# are the same; the losses are an untrained model's). Logs land in $OUT.
set -uo pipefail
PY=${PY:-python3}
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
if [ -d .whl ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TUNESMITH_HOME=/tmp/tshome
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c "import torch, transformers, peft, accelerate, trl; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__, 'trl', trl.__version__)"
echo "== tests on the GPU (packing, training)"
# The CUDA tests, then a CPU test in the same process (Liger must not leak into other models).
# (The rest of the suite pins CPU float32 numbers: on a CUDA machine "auto" loads bfloat16.)
timeout 150 $PY -m pytest -q -p no:cacheprovider "tests/test_packing.py::test_packed_loss_equals_unpacked_on_cuda" \
  "tests/test_train_adapters.py::test_apply_save_load_merge_round_trip" 2>&1 | tee "$OUT/pytest.log" | tail -15
echo "== benchmark: TRL vs tunesmith (default, Liger when installed), 3 interleaved repeats"
timeout 300 $PY bench/train_throughput.py --random-weights --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log" | grep -v Warning | tail -16
echo "== lever: tunesmith without Liger kernels"
timeout 120 $PY bench/train_throughput.py --random-weights --repeats 1 --sides tunesmith --ts-set train.fused_kernels=false 2>&1 | tee "$OUT/bench-noliger.log" | tail -4
