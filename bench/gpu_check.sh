#!/usr/bin/env bash
# The GPU checks in one call of a lent CUDA machine (see bench/RESULTS.md, "GPU").
#
#   here:  rm -rf .whl && pip download --no-deps -d .whl trl datasets dill multiprocess datasketch \
#            gguf liger-kernel bitsandbytes        (about 50 MB: under the device's 64 MiB carry)
#   there: run: bash bench/gpu_check.sh            (carry: .whl)
#
# Under 10 minutes in all; each step has its own `timeout` (90 + 270 + 110 + 90 s, plus setup),
# issue 15's target first, so a slow step cuts only what is already measured elsewhere:
#   1. the CUDA tests: packed == unpacked, flex_attention == the dense mask, inference on the GPU;
#   2. issue 15's target: Llama-3.2-1B's shape (random weights), TRL SFTTrainer + PEFT vs tunesmith,
#      2 interleaved repeats: useful tokens/s, peak GPU memory, padding, loss, MFU; the RESULT line;
#   3. QLoRA once (tunesmith, the same shape, 4-bit NF4 base through the carried bitsandbytes);
#   4. packed attention on SmolLM2-135M's shape: the dense 4D mask vs flex_attention.
#
# That machine's python3 has torch, transformers, peft and accelerate but no registry; the rest
# travels as wheels in .whl/. Real weights are too big to carry, so both benchmarks train a
# model's shape with seeded random weights (speed and memory are the same; the losses are an
# untrained model's). Logs land in $OUT (bench/results/gpu-* once copied back).
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
$PY -c "import bitsandbytes, liger_kernel; print('bitsandbytes', bitsandbytes.__version__)" || true
echo "== 1. tests on the GPU (packing, flex_attention vs the dense mask, training, inference on the GPU)"
# The CUDA tests, then a CPU test in the same process (Liger must not leak into other models).
# (The rest of the suite pins CPU float32 numbers: on a CUDA machine "auto" loads bfloat16.)
timeout 90 $PY -m pytest -q -p no:cacheprovider "tests/test_packing.py::test_packed_loss_equals_unpacked_on_cuda" \
  "tests/test_packing.py::test_flex_equals_dense_on_cuda" tests/test_cuda.py \
  "tests/test_train_adapters.py::test_apply_save_load_merge_round_trip" 2>&1 | tee "$OUT/pytest.log" | tail -15
echo "== 2. Llama-3.2-1B's shape: TRL vs tunesmith (defaults; Liger when installed), 2 interleaved repeats"
# ends with RESULT tokens_per_s_ratio=.. peak_rss_ratio=.. peak_gpu_ratio=.. padding_waste=.. loss_delta=.. mfu=b/a
timeout 270 $PY bench/train_throughput.py --shape llama-3.2-1b --repeats 2 --json "$OUT/bench-1b.json" 2>&1 \
  | tee "$OUT/bench-1b.log" | grep -v Warning | tail -16
echo "== 3. QLoRA once: tunesmith, Llama-3.2-1B's shape, method.name=qlora"
timeout 110 $PY bench/train_throughput.py --shape llama-3.2-1b --repeats 1 --sides tunesmith \
  --ts-set method.name=qlora --json "$OUT/bench-1b-qlora.json" 2>&1 | tee "$OUT/bench-1b-qlora.log" \
  | grep -v Warning | tail -8
echo "== 4. packed attention: tunesmith with train.packed_attention=dense vs flex (SmolLM2-135M's shape)"
# ends with RESULT packed_attention=flex/dense ...
timeout 90 $PY bench/train_throughput.py --shape smollm2-135m --repeats 1 --packed-attention dense,flex \
  --json "$OUT/bench-attention.json" 2>&1 | tee "$OUT/bench-attention.log" | grep -v Warning | tail -10
