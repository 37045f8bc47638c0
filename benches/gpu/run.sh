#!/usr/bin/env bash
# The GPU device check in one command, for the machine with the GPU (no network needed):
#
#   bash benches/gpu/run.sh [OUTDIR] [extra check.py arguments]
#
# Installs the fastbridge wheel from dist/ (or $FASTBRIDGE_WHEEL) into /tmp/fb-site without
# touching the system's packages (JAX, NumPy, CuPy and PyTorch come from the machine), prints
# the GPU's summary, then runs benches/gpu/check.py under a hard timeout and writes
# OUTDIR/gpu-check.json, OUTDIR/split-cost.json and OUTDIR/gpu-check.log. OUTDIR defaults to $OUT, else the current
# directory. The exit status is check.py's (0 fine, 1 a corrupted/lost/repeated batch, 2 a
# crash; 124 when the timeout stopped it).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
outdir="${1:-${OUT:-.}}"
if [ "$#" -gt 0 ]; then shift; fi
python="${PYTHON:-python3}"
site=/tmp/fb-site
mkdir -p "$outdir"
outdir="$(cd "$outdir" && pwd)"
log="$outdir/gpu-check.log"

wheel="${FASTBRIDGE_WHEEL:-}"
if [ -z "$wheel" ]; then
    shopt -s nullglob
    wheels=("$repo"/dist/fastbridge-*.whl)
    shopt -u nullglob
    if [ "${#wheels[@]}" -eq 0 ]; then
        echo "run.sh: no wheel in $repo/dist (build one with 'make wheel', or set FASTBRIDGE_WHEEL)" >&2
        exit 2
    fi
    wheel="${wheels[-1]}"
fi

{
    echo "== fastbridge GPU check: $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(hostname)"
    echo "wheel: $wheel"
    rm -rf "$site"
    "$python" -m pip install -q --no-index --no-deps --no-compile --target "$site" "$wheel"
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi --query-gpu=name,driver_version,memory.total,pcie.link.gen.max,pcie.link.width.max,pcie.link.gen.current,pcie.link.width.current \
            --format=csv || echo "nvidia-smi failed (ignored)"
    else
        echo "nvidia-smi: not found"
    fi
    "$python" --version
} 2>&1 | tee "$log"

export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
cd "$repo"
started=$SECONDS
set +e
timeout 330 "$python" benches/gpu/check.py --out "$outdir/gpu-check.json" "$@" 2>&1 | tee -a "$log"
status=${PIPESTATUS[0]}
# One transfer + split against per-leaf device_put, 8 leaves (about 20 s).
timeout 60 "$python" benches/gpu/split_cost.py --mib 1 16 64 --out "$outdir/split-cost.json" 2>&1 \
    | tee -a "$log" || echo "run.sh: split_cost.py failed (ignored)" | tee -a "$log"
set -e
echo "run.sh: check.py exited with $status after $((SECONDS - started)) s; results in $outdir" | tee -a "$log"
exit "$status"
