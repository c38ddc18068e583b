#!/usr/bin/env bash
# The GPU checks in one call of a lent CUDA machine (see bench/RESULTS.md, "GPU"): issue 7's
# benchmark against TRL, and issue 15's packed attention, dense 4D mask vs flex_attention.
#
#   run: bash bench/gpu_check.sh      (carry: .whl)
#
# Under 10 minutes in all: each step has its own `timeout` (150 + 210 + 200 s, plus setup), the
# new measurement first, so a slow step cuts the one already measured (TRL vs tunesmith; its
# tunesmith side now trains with packed_attention=auto, flex there when flex_attention can).
# Issue 7's lever without Liger (`--ts-set train.fused_kernels=false`) is in RESULTS.md and
# no longer run here.
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
echo "== tests on the GPU (packing, flex_attention vs the dense mask, training)"
# The CUDA tests, then a CPU test in the same process (Liger must not leak into other models).
# (The rest of the suite pins CPU float32 numbers: on a CUDA machine "auto" loads bfloat16.)
timeout 150 $PY -m pytest -q -p no:cacheprovider "tests/test_packing.py::test_packed_loss_equals_unpacked_on_cuda" \
  "tests/test_packing.py::test_flex_equals_dense_on_cuda" \
  "tests/test_train_adapters.py::test_apply_save_load_merge_round_trip" 2>&1 | tee "$OUT/pytest.log" | tail -15
echo "== packed attention: tunesmith with train.packed_attention=dense vs flex, 2 interleaved repeats"
# tokens/s, peak GPU memory, padding share; ends with RESULT packed_attention=flex/dense ...
timeout 210 $PY bench/train_throughput.py --random-weights --repeats 2 --packed-attention dense,flex \
  --json "$OUT/bench-attention.json" 2>&1 | tee "$OUT/bench-attention.log" | grep -v Warning | tail -10
echo "== benchmark: TRL vs tunesmith (default, Liger when installed), 2 interleaved repeats"
timeout 200 $PY bench/train_throughput.py --random-weights --repeats 2 --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log" | grep -v Warning | tail -16
