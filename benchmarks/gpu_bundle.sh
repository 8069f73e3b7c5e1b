#!/usr/bin/env bash
# Make the folder benchmarks/gpu_evidence.sh needs on the GPU machine, here, before the device call:
#
#   bash benchmarks/gpu_bundle.sh            # -> gpu_bundle/ (git-ignored), its size, the device command
#
# The GPU machine has torch, torchvision and timm but no package registry and no ray, mlflow, optuna, cvxpy,
# scipy or torch-pruning, and a call carries at most 64 MiB. Ray's wheel alone is 79 MB and cvxpy's solvers
# plus scipy another 80 MB, so the evidence runs without Ray and MLflow (benchmarks/width_study.py) and
# without a solver: every plan it trains is allocated here. gpu_bundle/ holds:
#   wheels/               torch-pruning (the model tracer) and pytest with its pure-Python dependencies, at
#                         the versions of requirements.lock (pip download, from this machine's registry)
#   study/plans/          the width study's channel plans (SynFlow's masks are made on the GPU: torch only)
#   plans/speedup/        the plans benchmarks/speedup.py times
#   cifar10-jpg.tar.gz    ../shared/data/cifar10-jpg.tar.gz, copied (never committed)
# Settings shared with gpu_evidence.sh (read by both, keep them equal): GPU_EVIDENCE_ARMS, _BUDGETS, _ABLATE.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUNDLE=${1:-$ROOT/gpu_bundle}
PY=${PYTHON:-python3}
ARCHIVE=${CIFAR_ARCHIVE:-$ROOT/../shared/data/cifar10-jpg.tar.gz}
WHEELS=(torch-pruning pytest pluggy iniconfig packaging pygments)
# shellcheck source=benchmarks/gpu_settings.sh
source "$ROOT/benchmarks/gpu_settings.sh"

if [[ ! -f $ARCHIVE ]]; then
    echo "gpu_bundle: no CIFAR archive at $ARCHIVE (set CIFAR_ARCHIVE)" >&2
    exit 2
fi
mkdir -p "$BUNDLE/wheels" "$BUNDLE/plans" "$BUNDLE/study"
pins=()
for name in "${WHEELS[@]}"; do
    pin=$(grep -i "^${name}==" "$ROOT/requirements.lock" | head -1)
    [[ -n $pin ]] || { echo "gpu_bundle: $name is not in requirements.lock" >&2; exit 2; }
    pins+=("$pin")
done
"$PY" -m pip download --quiet --no-deps --only-binary=:all: -d "$BUNDLE/wheels" "${pins[@]}"
cp "$ARCHIVE" "$BUNDLE/cifar10-jpg.tar.gz"
"$PY" "$ROOT/benchmarks/width_study.py" --plans-only --out "$BUNDLE/study" --arms "$ARMS" \
    --budgets "$BUDGETS" --ablate "$ABLATE" --epochs 1 --seeds 1 >/dev/null
"$PY" "$ROOT/benchmarks/speedup.py" --plans-only --plans-dir "$BUNDLE/plans/speedup" --archs $SPEEDUP_ARCHS >/dev/null

total=$(du -sb "$BUNDLE" | cut -f1)
tracked=$(git -C "$ROOT" ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
echo "gpu_bundle: $BUNDLE holds $((total / 1024)) KiB:"
(cd "$BUNDLE" && du -sb wheels plans cifar10-jpg.tar.gz | awk '{printf "  %-20s %8d KiB\n", $2, $1 / 1024}')
echo "the checkout's tracked files: $((tracked / 1024)) KiB; carried in all: $(((total + tracked) / 1024)) KiB of 65536"
echo "device call: run(command=\"bash benchmarks/gpu_evidence.sh gpu_out\", carry=[\"gpu_bundle\"], timeout_s=560)"
