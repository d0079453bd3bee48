#!/usr/bin/env bash
# Stage 2 against the authors' code: one command.
#
#   bash tests/reference/run.sh [fast|full] [--ours NAME ...]
#
# 1. skips (exit 0, with a message) when <repo>/../shared/reference/LLM-groundedDiffusion is missing;
# 2. builds .venv-ref (setup_venv.sh) if needed, the shared random model (make_model.py, in .venv) and the shared
#    random SAM (make_sam.py, in .venv-ref) under runs/reference/;
# 3. runs the authors' generation/lmd.py (run_authors.py, in .venv-ref) and our generate in the authors' mode
#    (run_ours.py, in .venv), each recording every stage into a safetensors file;
# 4. prints the stage table (compare.py); exit status 1 when a stage is out of tolerance.
# Extra arguments after the scenario go to run_ours.py (e.g. `--ours stop_rule` to switch one difference back).
# Environment: LMD_REFERENCE_DIR (their code), LMD_REF_OUT (default runs/reference), OMP_NUM_THREADS (default 1).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$REPO/tests/reference"
REFERENCE="${LMD_REFERENCE_DIR:-$REPO/../shared/reference/LLM-groundedDiffusion}"
if [ ! -d "$REFERENCE/generation" ]; then
    echo "SKIP reference comparison: the authors' code is not at $REFERENCE (set LMD_REFERENCE_DIR)"
    exit 0
fi
REFERENCE="$(cd "$REFERENCE" && pwd)"
SCENARIO="${1:-fast}"
shift || true
OUT="${LMD_REF_OUT:-$REPO/runs/reference}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}" HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false LMD_REFERENCE_DIR="$REFERENCE" PYTHONWARNINGS=ignore
OURS_PY="$REPO/.venv/bin/python"
REF_PY="${LMD_REF_VENV:-$REPO/.venv-ref}/bin/python"
[ -x "$OURS_PY" ] || { echo "no $OURS_PY: run 'make venv' first"; exit 2; }
start=$(date +%s)
bash "$HERE/setup_venv.sh"
mkdir -p "$OUT"
"$OURS_PY" "$HERE/make_model.py" "$OUT" > "$OUT/make_model.log" 2>&1 || { cat "$OUT/make_model.log"; exit 2; }
"$REF_PY" "$HERE/make_sam.py" "$OUT" > "$OUT/make_sam.log" 2>&1 || { cat "$OUT/make_sam.log"; exit 2; }
echo "authors' generation/lmd.py ($SCENARIO) ..."
"$REF_PY" "$HERE/run_authors.py" --model "$OUT/model" --sam "$OUT/sam" --scenario "$SCENARIO" \
    --out "$OUT/authors-$SCENARIO.safetensors" 2> "$OUT/authors-$SCENARIO.stderr" \
    || { tail -30 "$OUT/authors-$SCENARIO.stderr"; exit 2; }
echo "our generate, authors' mode ($SCENARIO) ..."
"$OURS_PY" "$HERE/run_ours.py" --model "$OUT/model" --sam "$OUT/sam" --scenario "$SCENARIO" \
    --authors "$OUT/authors-$SCENARIO.safetensors" --out "$OUT/ours-$SCENARIO.safetensors" "$@" \
    2> "$OUT/ours-$SCENARIO.stderr" || { tail -30 "$OUT/ours-$SCENARIO.stderr"; exit 2; }
set +e
"$OURS_PY" "$HERE/compare.py" "$OUT/authors-$SCENARIO.safetensors" "$OUT/ours-$SCENARIO.safetensors"
status=$?
echo "(whole comparison: $(( $(date +%s) - start )) s)"
exit $status
