#!/usr/bin/env bash
# GPU evidence (issues 16 and 27), in one command that ends within 9 minutes on one H100/H200 (16 cores),
# without Ray, MLflow, cvxpy or scipy (the GPU machine has none of them, and no package registry):
#
#   bash benchmarks/gpu_bundle.sh                       # here: wheels, plans and data into gpu_bundle/
#   bash benchmarks/gpu_evidence.sh OUT_DIR             # there: run(..., carry=["gpu_bundle"])
#
# Steps, in priority order, each under `timeout` and logged to OUT_DIR/<step>.log:
#   1. pytest-gpu   python -m pytest tests/trainers/test_cuda.py (the CUDA path of the training loop)
#   2. throughput   benchmarks/throughput.py --device cuda: our loop against the plain DataLoader loop
#   3. speedup      benchmarks/speedup.py --device cuda: cropped models against dense and masked ones
#   4. study        benchmarks/width_study.py --device cuda: mobilenetv2_cifar under a MACs budget, arms
#                   layer, path, uniform and synflow (gpu_settings.sh) and the ablation of `path`, several
#                   worker processes sharing the GPU, several schedule lengths (shortest first), 3 seeds;
#                   OUT_DIR/study/cells.jsonl (one line per finished cell), study.md, paired.csv, study.png
# A step that would start after GPU_EVIDENCE_LAST_START_S (480 s) is skipped, and each step's timeout
# ends it by GPU_EVIDENCE_BUDGET_S (540 s); both are noted in OUT_DIR/SKIPPED.txt. OUT_DIR/steps.log
# has each step's start, end, exit code and duration. The study keeps every cell that finished before its
# timeout; its 95% intervals need scipy: remake them here with
#   python benchmarks/width_study.py --out OUT_DIR/study --report
#
# The bundle (GPU_EVIDENCE_BUNDLE, default gpu_bundle/): wheels/ are installed with pip --no-index into a
# scratch folder put on PYTHONPATH (torch-pruning always; pytest only where it is missing); the study's
# channel plans are copied from study/plans/ (synflow's masks are made on the GPU); the data archive is
# extracted into the scratch folder. Without a bundle (a machine with the full install) the plans are
# allocated and the data is read from data/cifar10-jpg.
#
# Environment (defaults in brackets):
#   GPU_EVIDENCE_EPOCHS    schedule lengths, comma list [5,15]   GPU_EVIDENCE_SUBSET  training images [15000]
#   GPU_EVIDENCE_SEEDS     seeds per cell [3]                    GPU_EVIDENCE_JOBS    processes on the GPU [8]
#   GPU_EVIDENCE_ARMS, _BUDGETS, _ABLATE, _SPEEDUP_ARCHS        see benchmarks/gpu_settings.sh
#   GPU_EVIDENCE_BUDGET_S  hard end of the script [540]         GPU_EVIDENCE_LAST_START_S no step starts after [480]
#   GPU_EVIDENCE_SCRATCH   wheels, data, torch caches [$TMPDIR/gpu_evidence]
#   GPU_EVIDENCE_TAR       also pack OUT_DIR into this .tar.gz at the end
#   GPU_EVIDENCE_TINY=1    CPU smoke test: synthetic data, 1 epoch, 2 seeds, budget 0.3, arms layer,uniform,
#                          1 job (without TINY a CUDA device is required); pytest-gpu then skips its tests
#   PYTHON                 the interpreter [python3]
#
# Time estimate (not measured: no GPU run yet; docs/benchmarks.md "GPU evidence"): mobilenetv2_cifar at 30%
# of the MACs trains at ~180 images/s on the 2-core CPU (2 threads); in eager PyTorch on one GPU a small
# CIFAR model is bound by kernel launches, ~5-10k images/s per process, assumed ~30k for 8 processes. The default
# grid is 24 cells x (5 + 15) epochs x 15,000 images + 9 ablation cells x 15 epochs = 9.2M images, ~300 s,
# beside ~60 s for pytest, ~40 s throughput, ~60 s speedup. The study is last, shortest schedules first.
set -uo pipefail

if [[ $# -ne 1 || $1 == -* ]]; then
    echo "usage: bash benchmarks/gpu_evidence.sh OUT_DIR (see the top of this file for the settings)" >&2
    exit 2
fi
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$1" || exit 2
OUT_DIR=$(cd "$1" && pwd)
PY=${PYTHON:-python3}
TINY=${GPU_EVIDENCE_TINY:-0}
SCRATCH=${GPU_EVIDENCE_SCRATCH:-${TMPDIR:-/tmp}/gpu_evidence}
DATA=$ROOT/data/cifar10-jpg
mkdir -p "$SCRATCH"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0 \
    MLFLOW_DISABLE_TELEMETRY=true MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false

BUNDLE=${GPU_EVIDENCE_BUNDLE:-$ROOT/gpu_bundle}
# shellcheck source=benchmarks/gpu_settings.sh
source "$ROOT/benchmarks/gpu_settings.sh"
if [[ $TINY == 1 ]]; then
    EPOCHS=${GPU_EVIDENCE_EPOCHS:-1} SEEDS=${GPU_EVIDENCE_SEEDS:-2} JOBS=${GPU_EVIDENCE_JOBS:-1}
    ARMS=${GPU_EVIDENCE_ARMS:-layer,uniform} BUDGETS=${GPU_EVIDENCE_BUDGETS:-0.3} ABLATE=${GPU_EVIDENCE_ABLATE:-}
    SPEEDUP_ARCHS=${GPU_EVIDENCE_SPEEDUP_ARCHS:-cifar_resnet20}
    BUDGET_S=${GPU_EVIDENCE_BUDGET_S:-3600} LAST_START_S=${GPU_EVIDENCE_LAST_START_S:-3500} IMAGES=256
else
    EPOCHS=${GPU_EVIDENCE_EPOCHS:-5,15} SEEDS=${GPU_EVIDENCE_SEEDS:-3} JOBS=${GPU_EVIDENCE_JOBS:-8}
    BUDGET_S=${GPU_EVIDENCE_BUDGET_S:-540} LAST_START_S=${GPU_EVIDENCE_LAST_START_S:-480} IMAGES=20000
fi
SUBSET=${GPU_EVIDENCE_SUBSET:-15000}
GRACE=25  # seconds kept after a step's timeout: `timeout -k` and the next step's bookkeeping
START=$SECONDS
: >"$OUT_DIR/SKIPPED.txt"
: >"$OUT_DIR/steps.log"

elapsed() { echo $((SECONDS - START)); }
log() { echo "[$(elapsed) s] $*" | tee -a "$OUT_DIR/steps.log"; }
note() { echo "$*" | tee -a "$OUT_DIR/SKIPPED.txt" >&2; }

# step NAME CAP_S CMD...: run CMD under a timeout of at most CAP_S that ends it by BUDGET_S; log to NAME.log
step() {
    local name=$1 cap=$2 now left limit rc began
    shift 2
    now=$(elapsed)
    if ((now > LAST_START_S)); then
        note "$name: skipped: it would start at ${now} s, after the ${LAST_START_S} s start limit"
        return 0
    fi
    left=$((BUDGET_S - now - GRACE))
    limit=$((cap < left ? cap : left))
    if ((limit < 20)); then
        note "$name: skipped: only ${left} s left before the ${BUDGET_S} s end"
        return 0
    fi
    log "start $name (timeout ${limit} s): $*"
    began=$SECONDS
    timeout -s INT -k 20 "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1
    rc=$?
    log "end $name: exit $rc after $((SECONDS - began)) s"
    if ((rc == 124 || rc == 137)); then
        note "$name: stopped by its ${limit} s timeout (partial; see $name.log)"
    fi
    return 0
}

# the data: data/cifar10-jpg when extracted there, else the bundle's (or data/'s) archive extracted into the
# scratch folder; prints why not on failure
prepare_data() {
    local archive
    if [[ -d $DATA/train && -d $DATA/test ]]; then
        return 0
    fi
    DATA=$SCRATCH/cifar10-jpg
    if [[ -d $DATA/train && -d $DATA/test ]]; then
        return 0
    fi
    for archive in "$BUNDLE/cifar10-jpg.tar.gz" "$ROOT/data/cifar10-jpg.tar.gz" ""; do
        [[ -z $archive || -f $archive ]] && break
    done
    if [[ -z $archive ]]; then
        note "data: no data/cifar10-jpg and no cifar10-jpg.tar.gz in the bundle or data/: throughput and study skipped"
        return 1
    fi
    log "extracting $archive"
    if ! { mkdir -p "$DATA" && tar xzf "$archive" -C "$DATA"; }; then
        note "data: extracting $archive failed: throughput and study skipped"
        return 1
    fi
}

# the bundle's wheels on PYTHONPATH (pip --no-index into the scratch folder); a wheel already importable is left
install_wheels() {
    local site=$SCRATCH/site wheel name module wanted=()
    [[ -d $BUNDLE/wheels ]] || return 0
    for wheel in "$BUNDLE"/wheels/*.whl; do
        name=$(basename "$wheel" | cut -d- -f1)
        module=${name//-/_}  # the carried wheels' import names are their names
        "$PY" -c "import $module" 2>/dev/null || wanted+=("$wheel")
    done
    ((${#wanted[@]})) || return 0
    log "installing ${#wanted[@]} carried wheels into $site"
    if ! "$PY" -m pip install --quiet --no-index --no-deps --target "$site" "${wanted[@]}" >"$OUT_DIR/wheels.log" 2>&1; then
        note "wheels: pip could not install them (see wheels.log); adding the wheel files to PYTHONPATH instead"
        site=$(IFS=:; echo "${wanted[*]}")
    fi
    export PYTHONPATH="$PYTHONPATH:$site"
}

# the width study: plans from the bundle when it has them (no solver needed), then train
run_study() {
    local study=$OUT_DIR/study tiny=()
    mkdir -p "$study/plans"
    if [[ -d $BUNDLE/study/plans ]]; then
        cp -n "$BUNDLE"/study/plans/*.json "$study/plans/" 2>/dev/null || true
    fi
    [[ $TINY == 1 ]] && tiny=(--tiny)
    step study 600 "$PY" "$ROOT/benchmarks/width_study.py" --out "$study" --device "$DEVICE" --jobs "$JOBS" \
        --arms "$ARMS" --budgets "$BUDGETS" --ablate "$ABLATE" --epochs "$EPOCHS" --seeds "$SEEDS" \
        --train-subset "$SUBSET" --data-dir "$DATA" "${tiny[@]}"
}

DEVICE=$("$PY" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')" 2>/dev/null || echo none)
if [[ $DEVICE == none ]]; then
    echo "gpu_evidence: $PY cannot import torch" >&2
    exit 2
fi
if [[ $DEVICE != cuda && $TINY != 1 ]]; then
    echo "gpu_evidence: no CUDA device (GPU_EVIDENCE_TINY=1 runs the CPU smoke test)" >&2
    exit 2
fi
{
    echo "started $(date -u +%FT%TZ) on $(hostname), device $DEVICE, tiny=$TINY, $(nproc) cores"
    "$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
    echo "epochs=$EPOCHS subset=$SUBSET seeds=$SEEDS jobs=$JOBS arms=$ARMS budgets=$BUDGETS ablate=$ABLATE"
    echo "budget=${BUDGET_S}s last_start=${LAST_START_S}s bundle=$BUNDLE ($(du -sh "$BUNDLE" 2>/dev/null | cut -f1))"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
} 2>&1 | tee "$OUT_DIR/environment.txt"

install_wheels
SPEEDUP_PLANS=$BUNDLE/plans/speedup
[[ -d $SPEEDUP_PLANS ]] || SPEEDUP_PLANS=$SCRATCH/speedup_plans  # no bundle: allocated (and kept) there
step pytest-gpu 150 "$PY" -m pytest -q -p no:cacheprovider -m gpu "$ROOT/tests/trainers/test_cuda.py"
if [[ $TINY == 1 ]]; then  # synthetic data: the CPU smoke test needs no archive
    DATA_OK=yes
else
    prepare_data && DATA_OK=yes || DATA_OK=no
fi
if [[ $DATA_OK == yes && $TINY != 1 ]]; then
    step throughput 120 "$PY" "$ROOT/benchmarks/throughput.py" --device "$DEVICE" --data-dir "$DATA" \
        --images "$IMAGES" --workers "$(($(nproc) / 2 > 1 ? $(nproc) / 2 : 1))"
fi
# shellcheck disable=SC2086  # the architectures are words
step speedup 120 "$PY" "$ROOT/benchmarks/speedup.py" --device "$DEVICE" --archs $SPEEDUP_ARCHS \
    --plans-dir "$SPEEDUP_PLANS" --max-seconds "$([[ $TINY == 1 ]] && echo 1 || echo 5)"
[[ $DATA_OK == yes ]] && run_study

log "done"
if [[ -n ${GPU_EVIDENCE_TAR:-} ]]; then
    tar czf "$GPU_EVIDENCE_TAR" -C "$(dirname "$OUT_DIR")" "$(basename "$OUT_DIR")" && log "packed $GPU_EVIDENCE_TAR"
fi
exit 0
