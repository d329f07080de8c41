#!/usr/bin/env bash
# The GPU check of step 3, in one run of under 5 minutes on a machine with one CUDA GPU:
#   * ViT-B-16 (random weights: speed does not depend on them), bf16 autocast:
#     (a) model-only and (b) end-to-end slices/s on a 512-slice SYNTHETIC uncompressed series
#     (bench_selector.py), peak GPU memory (torch.cuda.max_memory_allocated during (b));
#   * GPU utilisation sampled by nvidia-smi every 200 ms during that run (mean and max);
#   * the host path alone: JPEG 2000 and uncompressed decode rates with all the machine's cores
#     (bench_decode.py), and the tiny model's end-to-end rate (what the host can feed).
# Everything goes to benchmarks/results/gpu_check_<UTC stamp>.txt (+ .json files beside it).
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine (after `pip install -e .`)
#   bash benchmarks/gpu_check.sh --dry-run  # anywhere: CPU, tiny model, 32 slices; checks the script only
#                                           # (writes to $TMPDIR/keyslice_gpu_check_dryrun.*)
#
# PYTHON selects the interpreter (default: python). KEYSLICE_DATA_DIR must point at the real test
# data when it is not ../shared/data beside the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."

dry=0
[[ "${1:-}" == "--dry-run" ]] && dry=1
py=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p benchmarks/results
if (( dry )); then
    base=${TMPDIR:-/tmp}/keyslice_gpu_check_dryrun  # not a result: kept out of benchmarks/results/
    vit_args=(--model tiny --device cpu --slices 32 --skip-reference)
    tiny_args=(--model tiny --device cpu --slices 32 --skip-reference)
    decode_args=(--repeat 1 --slices 32)
else
    base=benchmarks/results/gpu_check_$stamp
    vit_args=(--model ViT-B-16 --device cuda --precision bf16 --slices 512 --skip-reference)
    tiny_args=(--model tiny --device cuda --slices 512 --skip-reference)
    workers=$(nproc)
    decode_args=(--repeat 10 --slices 512 --workers "$workers")
fi
out=$base.txt
: > "$out"
log() { echo "$@" | tee -a "$out"; }

log "# benchmarks/gpu_check.sh $([[ $dry == 1 ]] && echo '--dry-run (CPU, tiny model: NOT GPU numbers)') at $stamp"
log "# $(uname -n), $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
if command -v nvidia-smi >/dev/null && (( ! dry )); then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | sed 's/^/# GPU: /' | tee -a "$out"
fi

sampler=""
samples=$(mktemp)
if command -v nvidia-smi >/dev/null && (( ! dry )); then
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -lms 200 > "$samples" &
    sampler=$!
fi
trap '[[ -n "$sampler" ]] && kill "$sampler" 2>/dev/null || true; rm -f "$samples"' EXIT

log "## ViT-B-16 bf16, 512 slices: model-only (a) and end-to-end (b)"
"$py" benchmarks/bench_selector.py "${vit_args[@]}" --json "$base.vit.json" 2>&1 | grep -v "No pretrained weights" | tee -a "$out"
if [[ -n "$sampler" ]]; then
    kill "$sampler" 2>/dev/null || true
    sampler=""
    awk -F', *' '{u+=$1; if ($1>mu) mu=$1; if ($2>mm) mm=$2; n++}
        END {if (n) printf "GPU utilisation during the run: mean %.0f %%, max %d %% (%d samples); peak memory.used %d MiB (nvidia-smi)\n", u/n, mu, n, mm}' \
        "$samples" | tee -a "$out"
fi

log "## tiny model (host path alone), 512 slices"
"$py" benchmarks/bench_selector.py "${tiny_args[@]}" --json "$base.tiny.json" 2>&1 | grep -v "No pretrained weights" | tee -a "$out"

log "## decoding on the host (all cores)"
"$py" benchmarks/bench_decode.py "${decode_args[@]}" --json "$base.decode.json" 2>&1 | tee -a "$out"
log "# done $(date -u +%H:%M:%SZ); written to $out"
