#!/usr/bin/env bash
# Build .venv-contract: the official provider SDKs, pinned, apart from spotctl's own venv, for
# the contract tests (tests/test_contract_*.py). Idempotent: a stamp makes a second run instant.
set -euo pipefail
. "$(dirname "$0")/venv_lib.sh"
VENV=.venv-contract
HYPERSTACK_VERSION="${HYPERSTACK_VERSION:-1.56.1a0}"
STAMP="$VENV/.contract-ready-$HYPERSTACK_VERSION"
if [ -f "$STAMP" ]; then exit 0; fi
new_venv "$VENV"
"$VENV/bin/pip" install --quiet "hyperstack==${HYPERSTACK_VERSION}"
"$VENV/bin/python" -c "import hyperstack; print('hyperstack', hyperstack.__version__)"
touch "$STAMP"
