#!/usr/bin/env bash
# Run the test suite several times beside one CPU hog (`yes > /dev/null`) per
# core, to find tests that only pass when the machine is idle.
#
#   scripts/stress_suite.sh            # 3 runs of: pytest -q -m "not slow"
#   scripts/stress_suite.sh 5          # 5 runs
#   scripts/stress_suite.sh 2 -q tests/chaos -p no:randomly   # other pytest arguments
#
# Prints each run's failures and wall time, then a summary; the exit status is
# 1 if any run failed. The hogs are killed on exit, Ctrl-C included.
set -uo pipefail
cd "$(dirname "$0")/.."

runs=${1:-3}
shift || true
if [ "$#" -gt 0 ]; then
    args=("$@")
else
    args=(-q -m "not slow")
fi
python=${PYTHON:-.venv/bin/python}
cores=$(getconf _NPROCESSORS_ONLN 2>/dev/null || nproc)

hogs=()
stop_hogs() {
    if [ "${#hogs[@]}" -gt 0 ]; then
        kill "${hogs[@]}" 2>/dev/null
        wait "${hogs[@]}" 2>/dev/null
    fi
    hogs=()
}
trap stop_hogs EXIT
trap 'exit 130' INT TERM

for _ in $(seq "$cores"); do
    yes > /dev/null &
    hogs+=("$!")
done
echo "stress: $runs run(s) of pytest ${args[*]}, beside $cores CPU hog(s)"

log=$(mktemp)
failed_runs=0
summary=()
for run in $(seq "$runs"); do
    start=$(date +%s)
    "$python" -m pytest "${args[@]}" > "$log" 2>&1
    status=$?
    seconds=$(($(date +%s) - start))
    failures=$(grep -E '^(FAILED|ERROR) ' "$log" || true)
    last=$(grep -E '(passed|failed|error|errors|skipped|deselected|no tests ran).* in [0-9.]+s' "$log" | tail -n 1)
    echo "run $run: exit $status, ${seconds} s wall: ${last:-no pytest summary line}"
    if [ "$status" -ne 0 ]; then
        failed_runs=$((failed_runs + 1))
        if [ -n "$failures" ]; then
            echo "$failures" | sed 's/^/    /'
        else
            tail -n 20 "$log" | sed 's/^/    /'
        fi
    fi
    summary+=("run $run: exit $status, ${seconds} s")
done
rm -f "$log"

echo "stress: $failed_runs of $runs run(s) failed"
printf '  %s\n' "${summary[@]}"
[ "$failed_runs" -eq 0 ]
