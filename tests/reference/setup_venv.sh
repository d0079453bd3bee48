#!/usr/bin/env bash
# Build the authors' environment at <repo>/.venv-ref (the reference README's pip line; CPU torch from the local
# wheel where pip is configured for one) plus safetensors, which the recorder writes with.  Idempotent.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${LMD_REF_VENV:-$REPO/.venv-ref}"
PYTHON="${PYTHON:-python3}"
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import diffusers, transformers, safetensors, cv2, inflect, easydict, scipy" 2>/dev/null; then
    exit 0
fi
echo "building $VENV (the authors' pinned packages; a few minutes)"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q torch==2.13.0 diffusers==0.18.0 huggingface_hub==0.25.2 \
    transformers==4.40.2 accelerate==0.30.1 numpy scipy inflect easydict matplotlib opencv-python-headless \
    safetensors
