#!/usr/bin/env bash
# The device check: on a machine with one CUDA GPU, in about 8 minutes, everything that only CUDA
# exercises, written to one folder ($OUT, default device_check/<time>; summary.md lists what passed).
#   scripts/device_check.sh            # from the repository root, after `pip install -e . -r requirements-dev.txt`
# 1. the CUDA tests (tests/test_cuda.py: fused attention and its bias gradient, autocast steps, chunked
#    inference) and the fast suite on the GPU machine;
# 2. the quickstart SwinIR and a HAT-mini i-LN trained 200 iterations each through torchrun + nccl
#    (world size 1) in fp32, bf16 and fp16, then resumed from their 100-iteration state to 200;
# 3. benchmark_speed.py on CUDA (LN / i-LN vs BasicSR's SwinIR, eager and compiled, train step and
#    inference, peak memory, TFLOP/s and MFU), then in bf16 with --with-data (SwinIR i-LN fed by BasicSR's
#    loader from PNG and LMDB sub-images with 0, 4 and 8 workers: can the loader keep the GPU busy?), and
#    benchmark_large_image.py on CUDA (one piece, chunked, tiled).
# A failing step is recorded and the next one still runs; the exit code is the number of failed steps.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-device_check/$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
export BASICSR_ILN_ROOT="$OUT/work"
FAILED=0
echo "# Device check $(date -u)" > "$OUT/summary.md"

step() {  # step NAME TIMEOUT_S COMMAND...: run, log to $OUT/NAME.log, record the outcome
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    [ $rc -eq 0 ] || FAILED=$((FAILED + 1))
    echo "- $name: rc $rc, $((SECONDS - start)) s" | tee -a "$OUT/summary.md"
}

{ nvidia-smi; python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
torch.cuda.get_device_name())"; git rev-parse HEAD; } > "$OUT/environment.txt" 2>&1

step cuda_tests 240 python -m pytest -q tests/test_cuda.py
step fast_suite 300 python -m pytest -q -m "not slow" -x --ignore=tests/test_cuda.py

step quickstart_data 60 python scripts/make_quickstart_dataset.py
TRAIN=(python -m torch.distributed.run --nproc_per_node=1 --rdzv_endpoint=127.0.0.1:29511 basicsr_iln/train.py
       --launcher pytorch)
HAT_MINI=options/train/HAT/train_HAT-mini_SRx2_iln.yml
QUICK=(datasets:train:dataroot_gt=datasets/quickstart/train/HR datasets:train:dataroot_lq=datasets/quickstart/train/LR_x2
       datasets:train:dataset_enlarge_ratio=10)
for val in val val_2 val_3; do  # HAT-mini validates on three sets: the quickstart's stands in for each
    QUICK+=(datasets:$val:dataroot_gt=datasets/quickstart/val/HR datasets:$val:dataroot_lq=datasets/quickstart/val/LR_x2)
done
for precision in fp32 bf16 fp16; do
    COMMON=(train:total_iter=200 train:precision=$precision logger:save_checkpoint_freq=100 logger:print_freq=50
            val:val_freq=200 dist_params:backend=nccl)
    step "quickstart_$precision" 180 "${TRAIN[@]}" -opt options/quickstart/train_SwinIR_quickstart_x2_iln.yml \
        --force_yml name=device_quickstart_$precision "${COMMON[@]}"
    step "hat_mini_iln_$precision" 240 "${TRAIN[@]}" -opt "$HAT_MINI" --force_yml name=device_hat_mini_$precision \
        "${QUICK[@]}" "${COMMON[@]}"
done
# Resume: the 100-iteration state of the bf16 HAT-mini run, trained on to 200 in a run of its own.
RESUMED=$BASICSR_ILN_ROOT/experiments/device_hat_mini_bf16
step resume_hat_mini_bf16 240 "${TRAIN[@]}" -opt "$HAT_MINI" --force_yml name=device_hat_mini_bf16 \
    "${QUICK[@]}" train:total_iter=200 train:precision=bf16 logger:save_checkpoint_freq=100 val:val_freq=200 \
    dist_params:backend=nccl path:resume_state="$RESUMED/training_states/100.state"

step benchmark_speed 420 python scripts/benchmark_speed.py --devices cuda --compile --repeats 20 \
    --embed-dim 180 --depths 6 6 --heads 6 6 --window 16 --batch 8 --train-size 64 --infer-size 256 \
    --out "$OUT/benchmark_speed.md"
step benchmark_speed_data 180 python scripts/benchmark_speed.py --devices cuda --archs SwinIR --precision bf16 \
    --with-data --workers 0 4 8 --repeats 5 --warmup 1 --no-memory --embed-dim 180 --depths 6 6 --heads 6 6 \
    --window 16 --batch 8 --train-size 64 --infer-size 256 --out "$OUT/benchmark_speed_data.md"
step benchmark_large_image 300 python scripts/benchmark_large_image.py --device cuda --lr-size 1080 1920 \
    --embed-dim 180 --depths 6 --heads 6 --window 16 --out "$OUT/benchmark_large_image.md"

echo "failed steps: $FAILED" | tee -a "$OUT/summary.md"
exit "$FAILED"
