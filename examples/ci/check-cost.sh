#!/usr/bin/env bash
# CI gate: fail when the last day's cost per million output tokens exceeds a threshold, or when
# billing observability is not ok (a dark tail would make the figure a lower bound).
#   usage: check-cost.sh MAX_USD_PER_MTOK [CONFIG]
# Exit codes are spotctl's: 0 ok, 3 threshold crossed, 4 billing stale, 2 bad usage.
set -euo pipefail
max="${1:?usage: check-cost.sh MAX_USD_PER_MTOK [CONFIG]}"
config="${2:-spotctl.toml}"
spotctl --config "$config" cost --window 24h --fail-over "$max" --fail-stale --json > cost.json
echo "cost per Mtok (output) over 24h: $(python3 -c 'import json;print(json.load(open("cost.json"))["usd_per_mtok_output"])')"
