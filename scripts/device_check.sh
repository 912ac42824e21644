#!/usr/bin/env bash
# The device check: what only CUDA exercises, on a machine with one CUDA GPU, in two parts that each fit one
# call of this workplace's device tool (a command runs at most 600 s; a session has 15 minutes of device time,
# the machine's start of a minute or more included).
#
#   bash scripts/device_check.sh core    # the essentials; step limits sum to 410 s
#   bash scripts/device_check.sh extra   # the rest, only if the device time left allows; step limits sum to 320 s
# (limits are caps, not measured times: the script has not run on a GPU yet.)
#
# core: the CUDA tests (tests/test_cuda.py); HAT-mini i-LN trained 100 iterations on the quickstart data through
#   torchrun + nccl (world size 1) in bf16 (with prefetch_mode: cuda) and in fp16; the bf16 run's 50-iteration
#   checkpoint copied into a run of its own and resumed to 100, then scripts/compare_resume.py: how far its final
#   weights and logged losses are from the uninterrupted run's; benchmark_speed.py on CUDA for SwinIR (ours LN /
#   i-LN and BasicSR's) at the released width (embed 180, window 16, one residual group of 6 blocks) eager in fp32,
#   then eager + compiled at 2 blocks in bf16 (issue 17's GPU target: ours / BasicSR training throughput in bf16;
#   compiling 3 variants of 6 blocks would not fit).
# extra: the quickstart SwinIR trained 200 iterations in fp32, bf16 and fp16 and HAT-mini i-LN 100 in fp32
#   (torchrun + nccl); benchmark_speed.py --with-data in bf16 (BasicSR's loader from PNG and LMDB sub-images,
#   0, 4 and 8 workers: can it keep the GPU busy?); benchmark_speed.py --channels-last-effect in bf16 (option
#   channels_last: cuDNN's convolutions in NHWC); benchmark_large_image.py on CUDA at 1080x1920.
#
# Through the device tool, from the repository root of the session's checkout (the device machine has torch
# but neither basicsr nor lmdb, and cannot download: they travel as wheels in .whl/, which .gitignore ignores).
# Once, here (any python with torch: basicsr 1.4.2 is an sdist whose setup.py wants torch, so no build
# isolation; the wheel it makes is pure Python):
#   python3 -m pip wheel --no-deps --no-build-isolation -w .whl basicsr==1.4.2
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 -d .whl lmdb==3.0.0
# Then one call each (extra right after core, while the machine is still warm, if status shows time for it):
#   run  command: bash scripts/device_check.sh core    carry: [".whl"]  timeout_s: 480
#   run  command: bash scripts/device_check.sh extra   carry: [".whl"]  timeout_s: 360
# With less device time left, BUDGET_S=<seconds> caps a part: each step's limit is cut to what is left of it,
# and a step with under 10 s left is skipped (and counted as failed); give timeout_s about BUDGET_S + 40.
# Nothing is installed there: the script puts the carried wheels (installed into a temporary folder) and the
# repository on PYTHONPATH and runs python3 (PYTHON=... to change); pytest runs with -o addopts= (pytest.ini's
# --dist needs pytest-xdist). Elsewhere: `pip install -e . -r requirements-dev.txt`, then the same commands.
#
# What comes back ($OUT, set by the device tool; default device_check/<time>): summary.md (one line per step:
# passed / FAILED rc N / TIMED OUT, seconds; the last log lines of a failed step; the resume comparison),
# environment.txt (GPU, versions), the benchmark tables (benchmark_speed*.md, benchmark_large_image.md) and
# logs_<part>.tar.gz: every step's log and the runs' folders (options, training logs, TensorBoard events,
# validation images) without checkpoints, re-packed after each step, so a part cut short still returns the
# logs of the steps it finished. At most 6 files, one folder level. The reply's output_tail holds the summary.
# A failing step is recorded and the next one still runs (all are skipped if the preflight import fails); the
# exit code is the number of failed steps.
#
# Rehearsal, on any machine: REHEARSAL=1 bash scripts/device_check.sh core|extra runs the same steps on the CPU,
# at toy sizes and iteration counts (HAT-mini cut to one block, batches of 2), with gloo for nccl and without the
# CUDA prefetch, and with every step limit and the budget times LIMIT_FACTOR (default 3). It measures nothing; it
# checks the script itself (steps, option keys, flags, the resume copy and comparison, the archive) before a GPU's
# minutes are spent on it: tests/test_device_check.py runs both parts (about 5 minutes each on 2 cores).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
PART=${1:-}
case $PART in
    core) DEFAULT_BUDGET=410 ;;
    extra) DEFAULT_BUDGET=320 ;;
    *) echo "usage: bash scripts/device_check.sh core|extra  (see the comment at the top)" >&2; exit 2 ;;
esac
if [ -n "${REHEARSAL:-}" ]; then  # see the header: the same steps on the CPU, at toy sizes
    FACTOR=${LIMIT_FACTOR:-3} DEVICE=cpu BACKEND=gloo PREFETCH='~' HALF=2 QUICK_ITERS=4 EAGER_DEPTH=1 COMPILED_DEPTH=1
    SIZES=(--embed-dim 12 --heads 2 --window 8 --batch 1 --train-size 16 --infer-size 16)
    WORKERS=(0 2)
    LARGE=(--lr-size 48 64 --embed-dim 24 --depths 1 --heads 2 --window 8 --tile 32 --tile-overlap 8)
    # Batches of 2 (HAT-mini's of 16 x 32^2 LR patches cut to 2 x 16^2): CPU fp16 training is slow (IRModel warns).
    TRAIN_ON=(num_gpu=0 datasets:train:batch_size_per_gpu=2)
    HAT_TOY=('network_g:depths=[1]' 'network_g:num_heads=[6]' datasets:train:gt_size=32)
else
    FACTOR=1 DEVICE=cuda BACKEND=nccl PREFETCH=cuda HALF=50 QUICK_ITERS=200 EAGER_DEPTH=6 COMPILED_DEPTH=2
    SIZES=(--embed-dim 180 --heads 6 --window 16 --batch 8 --train-size 64 --infer-size 256)
    WORKERS=(0 4 8)
    LARGE=(--lr-size 1080 1920 --embed-dim 180 --depths 6 --heads 6 --window 16)
    TRAIN_ON=() HAT_TOY=()
fi
DEADLINE=$((SECONDS + FACTOR * ${BUDGET_S:-$DEFAULT_BUDGET}))
OUT=${OUT:-device_check/$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT" || exit 1
WORK=$(mktemp -d "${TMPDIR:-/tmp}/device_check_$PART.XXXXXX") || exit 1
LOGS=$WORK/logs
mkdir -p "$LOGS" "$WORK/root"
export BASICSR_ILN_ROOT=$WORK/root PYTHONUNBUFFERED=1
EXPERIMENTS=$BASICSR_ILN_ROOT/experiments
PY=${PYTHON:-python3}
SITE=$WORK/site
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
SUMMARY=$OUT/summary.md
FAILED=0 LAST_RC=0
SKIP_ALL=
echo "# Device check, $PART: $(date -u)" > "$SUMMARY"
[ -z "${REHEARSAL:-}" ] || echo "- REHEARSAL on the CPU at toy sizes: nothing here is a CUDA measurement" >> "$SUMMARY"
echo "- work folder (logs, runs, checkpoints): $WORK" >> "$SUMMARY"

pack() {  # every log and run folder, without checkpoints, into one archive (written aside, then renamed)
    tar -czf "$OUT/logs.tar.gz.part" -C "$WORK" --exclude='*.pth' --exclude='*.state' logs root \
        && mv -f "$OUT/logs.tar.gz.part" "$OUT/logs_$PART.tar.gz"
}

step() {  # step NAME LIMIT_S COMMAND...: run under a time limit, log to $LOGS/NAME.log, record the outcome
    local name=$1 limit=$2
    shift 2
    local left=$((DEADLINE - SECONDS))
    if [ -n "$SKIP_ALL" ] || [ "$left" -lt 10 ]; then
        FAILED=$((FAILED + 1)) LAST_RC=-1
        echo "- $name: skipped (${SKIP_ALL:-${left} s of the budget left})" | tee -a "$SUMMARY"
        return
    fi
    limit=$((limit * FACTOR))
    [ "$limit" -le "$left" ] || limit=$left
    local start=$SECONDS
    timeout -k 10 "$limit" "$@" > "$LOGS/$name.log" 2>&1
    local rc=$? outcome=passed
    LAST_RC=$rc
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        outcome="TIMED OUT (rc $rc)"
    elif [ $rc -ne 0 ]; then
        outcome="FAILED rc $rc"
    fi
    [ $rc -eq 0 ] || FAILED=$((FAILED + 1))
    echo "- $name: $outcome, $((SECONDS - start)) s (limit $limit s)" | tee -a "$SUMMARY"
    if [ $rc -ne 0 ]; then
        tail -n 12 "$LOGS/$name.log" | sed 's/^/      /' | tee -a "$SUMMARY"
    fi
    pack
}

{
    date -u; uname -a; nvidia-smi
    "$PY" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda',
torch.version.cuda, '| cudnn', torch.backends.cudnn.version(), '|', torch.cuda.get_device_name() if
torch.cuda.is_available() else 'no CUDA device')"
    echo "commit: ${DEVICE_CHECK_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo 'unknown (no git metadata here)')}"
    ls .whl 2>/dev/null
} > "$OUT/environment.txt" 2>&1

if compgen -G '.whl/*.whl' > /dev/null; then
    step wheels 15 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" .whl/*.whl
else
    echo "- no .whl/ folder: the packages installed here are used" | tee -a "$SUMMARY"
fi
# basicsr 1.4.2 imports distutils.version, which Python 3.12 no longer has; setuptools' .pth shim provides it where
# installed. Else a stand-in: a copy of setuptools' own standalone module distutils/version.py.
if ! "$PY" -c "import distutils.version" > /dev/null 2>&1; then
    mkdir -p "$SITE/distutils" && : > "$SITE/distutils/__init__.py"
    "$PY" -c "import importlib.util, shutil, sys
shutil.copy(importlib.util.find_spec('setuptools').submodule_search_locations[0] + '/_distutils/version.py', sys.argv[1])" \
        "$SITE/distutils/version.py" > "$LOGS/distutils.log" 2>&1
    echo "- distutils.version not importable: stand-in copied from setuptools (rc $?)" | tee -a "$SUMMARY"
fi
step preflight 15 "$PY" -c "import basicsr_iln, basicsr, torch
assert '$DEVICE' == 'cpu' or torch.cuda.is_available(), 'no CUDA device'
print('basicsr', basicsr.__version__, basicsr.__file__)"
[ "$LAST_RC" -eq 0 ] || SKIP_ALL="the preflight failed"

PORT=29510
train() {  # train NAME LIMIT_S OPTION_FILE FORCE_YML...: a torchrun + nccl run of world size 1, on a port of its own
    local name=$1 limit=$2 options=$3
    shift 3
    PORT=$((PORT + 1))
    step "$name" "$limit" "$PY" -m torch.distributed.run --nproc_per_node=1 --rdzv_endpoint=127.0.0.1:$PORT \
        basicsr_iln/train.py --launcher pytorch -opt "$options" --force_yml name="device_$name" \
        dist_params:backend=$BACKEND "${TRAIN_ON[@]}" "$@"
}
HAT_MINI=options/train/HAT/train_HAT-mini_SRx2_iln.yml
# The quickstart data for HAT-mini (it validates on three sets: the quickstart's stands in for each), loaded in
# the main process: with loader workers a resumed run would draw other augmentations than the uninterrupted one.
HAT_DATA=(datasets:train:dataroot_gt=datasets/quickstart/train/HR datasets:train:dataroot_lq=datasets/quickstart/train/LR_x2
          datasets:train:dataset_enlarge_ratio=10 datasets:train:num_worker_per_gpu=0 "${HAT_TOY[@]}")
for val in val val_2 val_3; do
    HAT_DATA+=(datasets:$val:dataroot_gt=datasets/quickstart/val/HR datasets:$val:dataroot_lq=datasets/quickstart/val/LR_x2)
done
HAT_ITERS=(train:total_iter=$((2 * HALF)) logger:save_checkpoint_freq=$HALF logger:print_freq=$(((HALF + 4) / 5))
           val:val_freq=$((2 * HALF)))
SPEED=(scripts/benchmark_speed.py --devices $DEVICE --archs SwinIR "${SIZES[@]}")

step quickstart_data 20 "$PY" scripts/make_quickstart_dataset.py

if [ "$PART" = core ]; then
    step cuda_tests 70 "$PY" -m pytest -q -ra -o addopts= -p no:cacheprovider tests/test_cuda.py
    # The bf16 pair copies its (page-locked) batches on a side stream: prefetch_mode: cuda, with its resume.
    train hat_mini_iln_bf16 60 "$HAT_MINI" "${HAT_DATA[@]}" "${HAT_ITERS[@]}" train:precision=bf16 \
        datasets:train:prefetch_mode=$PREFETCH
    train hat_mini_iln_fp16 50 "$HAT_MINI" "${HAT_DATA[@]}" "${HAT_ITERS[@]}" train:precision=fp16
    # Resume: the bf16 run's checkpoint of half way (iteration 50), copied into a run of its own (as a run cut there
    # would have left it), trained on to the end there; the uninterrupted run's files stay as they are, for the
    # comparison.
    FULL=$EXPERIMENTS/device_hat_mini_iln_bf16 RESUMED=$EXPERIMENTS/device_hat_mini_iln_bf16_resumed
    step resume_copy 5 bash -c 'mkdir -p "$2/models" "$2/training_states" && cp "$1/models/net_g_$3.pth" "$2/models/" &&
        cp "$1/training_states/$3.state" "$2/training_states/"' _ "$FULL" "$RESUMED" "$HALF"
    train hat_mini_iln_bf16_resumed 45 "$HAT_MINI" "${HAT_DATA[@]}" "${HAT_ITERS[@]}" train:precision=bf16 \
        datasets:train:prefetch_mode=$PREFETCH path:resume_state="$RESUMED/training_states/$HALF.state"
    step compare_resume 15 "$PY" scripts/compare_resume.py "$FULL" "$RESUMED" --from-iter "$HALF"
    [ "$LAST_RC" -ne 0 ] || sed 's/^/      /' "$LOGS/compare_resume.log" | tee -a "$SUMMARY"  # (failed: shown above)
    step benchmark_speed 25 "$PY" "${SPEED[@]}" --depths $EAGER_DEPTH --repeats 15 --out "$OUT/benchmark_speed.md"
    step benchmark_speed_compiled 90 "$PY" "${SPEED[@]}" --depths $COMPILED_DEPTH --compile --no-memory --repeats 10 \
        --warmup 2 --precision bf16 --out "$OUT/benchmark_speed_compiled.md"
else
    QUICK=(train:total_iter=$QUICK_ITERS logger:save_checkpoint_freq=$((QUICK_ITERS / 2))
           logger:print_freq=$((QUICK_ITERS / 4)) val:val_freq=$QUICK_ITERS)
    for precision in fp32 bf16 fp16; do
        train "quickstart_$precision" 30 options/quickstart/train_SwinIR_quickstart_x2_iln.yml "${QUICK[@]}" \
            train:precision=$precision
    done
    train hat_mini_iln_fp32 45 "$HAT_MINI" "${HAT_DATA[@]}" "${HAT_ITERS[@]}" train:precision=fp32
    step benchmark_speed_data 60 "$PY" "${SPEED[@]}" --depths $EAGER_DEPTH --precision bf16 --with-data \
        --workers "${WORKERS[@]}" \
        --repeats 5 --warmup 1 --no-memory --out "$OUT/benchmark_speed_data.md"
    step benchmark_speed_channels_last 25 "$PY" "${SPEED[@]}" --depths $EAGER_DEPTH --precision bf16 \
        --channels-last-effect \
        --repeats 10 --warmup 2 --no-memory --out "$OUT/benchmark_speed_channels_last.md"
    step benchmark_large_image 50 "$PY" scripts/benchmark_large_image.py --device $DEVICE "${LARGE[@]}" \
        --out "$OUT/benchmark_large_image.md"
fi

pack
size=$(stat -c %s "$OUT/logs_$PART.tar.gz" 2>/dev/null || echo 0)
[ "$size" -le $((16 * 1024 * 1024)) ] || echo "logs_$PART.tar.gz is $size bytes: over the 16 MiB that come back" \
    | tee -a "$SUMMARY"
echo "failed steps: $FAILED (part $PART, $SECONDS s)" | tee -a "$SUMMARY"
exit "$FAILED"
