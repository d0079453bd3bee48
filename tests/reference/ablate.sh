#!/usr/bin/env bash
# One difference at a time: our generate in the authors' mode with ONE emulation or switch put back to our own
# behaviour, compared with the authors' record that run.sh left; prints the first stage each one moves and by how
# much.  Run `bash tests/reference/run.sh` first (same scenario).
#
#   bash tests/reference/ablate.sh [fast|full] [NAME ...]     (default: every name run_ours.py knows)
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$REPO/tests/reference"
SCENARIO="${1:-fast}"
shift || true
OUT="${LMD_REF_OUT:-$REPO/runs/reference}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONWARNINGS=ignore
PY="$REPO/.venv/bin/python"
AUTHORS="$OUT/authors-$SCENARIO.safetensors"
[ -f "$AUTHORS" ] || { echo "no $AUTHORS: run tests/reference/run.sh $SCENARIO first"; exit 2; }
NAMES=("$@")
if [ ${#NAMES[@]} -eq 0 ]; then
    NAMES=(box_order box_seeds box_raster tokens stop_rule alignment compose_step0 sam_point sam_to_latent sam_iou
           sam_choice sam sam_fallback head_reduction truncate_forward batching)
fi
for name in "${NAMES[@]}"; do
    t0=$(date +%s)
    "$PY" "$HERE/run_ours.py" --model "$OUT/model" --sam "$OUT/sam" --scenario "$SCENARIO" --ours "$name" \
        --out "$OUT/ours-$SCENARIO-$name.safetensors" > /dev/null 2> "$OUT/ours-$SCENARIO-$name.stderr" \
        || { echo "$name: run failed (see $OUT/ours-$SCENARIO-$name.stderr)"; continue; }
    printf '%-16s %s (%ss)\n' "$name" \
        "$("$PY" "$HERE/compare.py" "$AUTHORS" "$OUT/ours-$SCENARIO-$name.safetensors" --first || true)" \
        "$(( $(date +%s) - t0 ))"
done
