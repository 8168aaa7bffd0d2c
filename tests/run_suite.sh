#!/usr/bin/env bash
# The whole suite, as `make test` and CI run it. Every phase runs even when an
# earlier one failed, the lab is always brought down, and a summary with the
# time of each phase is printed at the end.
set -u
cd "$(dirname "$0")/.."
declare -a names results times
status=0
phase() {
  local name=$1; shift
  local t0=$SECONDS
  echo "=== $name: $*"
  if "$@"; then results+=("ok"); else results+=("FAILED"); status=1; fi
  names+=("$name"); times+=($((SECONDS - t0)))
}
suite_start=$SECONDS
trap 'make --no-print-directory lab-down >/dev/null 2>&1 || true' EXIT

phase units       make --no-print-directory units
phase sanity      make --no-print-directory sanity
phase lint        make --no-print-directory lint
phase lab-up      make --no-print-directory lab-up
phase integration make --no-print-directory integration
phase lab-down    make --no-print-directory lab-down

echo "=== summary"
for i in "${!names[@]}"; do
  printf '%-12s %-7s %4ss\n' "${names[$i]}" "${results[$i]}" "${times[$i]}"
done
echo "suite time: $((SECONDS - suite_start))s"
exit $status
