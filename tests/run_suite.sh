#!/usr/bin/env bash
# The whole suite, as `make test` and CI run it. Every phase runs even when an
# earlier one failed, the lab is always brought down, and a summary with the
# time of each phase is printed at the end, closed by one line that adds up
# the pytest results (sanity and lint count as one test each).
set -u -o pipefail
cd "$(dirname "$0")/.." || exit 2
logs=$(mktemp -d)
declare -a names results times
status=0 passed=0 failed=0 skipped=0
count() {  # count <log> <word>: sum of "N <word>" in pytest's closing lines
  grep -E '^(=+ )?[0-9]+ (passed|failed|skipped|errors?|deselected|warnings?)\b.* in [0-9.]+s' "$1" \
    | grep -oE "[0-9]+ $2" | awk '{s+=$1} END {print s+0}'
}
phase() {
  local name=$1 kind=$2; shift 2
  local t0=$SECONDS log="$logs/$name.log"
  echo "=== $name: $*"
  if "$@" 2>&1 | tee "$log"; then results+=("ok"); else results+=("FAILED"); status=1; fi
  names+=("$name"); times+=($((SECONDS - t0)))
  if [ "$kind" = pytest ]; then
    passed=$((passed + $(count "$log" passed)))
    failed=$((failed + $(count "$log" failed) + $(count "$log" error)))
    skipped=$((skipped + $(count "$log" skipped)))
  elif [ "$kind" = check ]; then
    if [ "${results[-1]}" = ok ]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
  fi
}
suite_start=$SECONDS
trap 'make --no-print-directory lab-down >/dev/null 2>&1 || true; rm -rf "$logs"' EXIT

# The lab comes up beside the checks: its boots mostly wait on forks and daemons, the checks mostly compute.
# Its output is printed once the checks are done, as its own phase with its own time.
lab_start=$SECONDS
(make --no-print-directory lab-up >"$logs/lab-up.log" 2>&1; echo $? >"$logs/lab-up.rc"; echo $((SECONDS - lab_start)) >"$logs/lab-up.time") &
lab_pid=$!
echo "=== lab-up: started beside the checks (printed after them)"

# The unit tests run beside sanity too, from a collection copy of their own (each make target rebuilds its copy).
units_start=$SECONDS
(make --no-print-directory units BUILD=.build-units >"$logs/units.log" 2>&1; echo $? >"$logs/units.rc"; echo $((SECONDS - units_start)) >"$logs/units.time") &
units_pid=$!
echo "=== units: started beside sanity (printed after it)"

phase sanity      check  make --no-print-directory sanity
wait "$units_pid"
echo "=== units (beside sanity)"
cat "$logs/units.log"
names+=("units")
if [ "$(cat "$logs/units.rc" 2>/dev/null)" = 0 ]; then results+=("ok"); else results+=("FAILED"); status=1; fi
times+=("$(cat "$logs/units.time" 2>/dev/null || echo '?')")
passed=$((passed + $(count "$logs/units.log" passed)))
failed=$((failed + $(count "$logs/units.log" failed) + $(count "$logs/units.log" error)))
skipped=$((skipped + $(count "$logs/units.log" skipped)))
phase lint        check  make --no-print-directory lint
phase changelog   check  make --no-print-directory changelog-lint
phase docs        pytest make --no-print-directory docs-test

wait "$lab_pid"
echo "=== lab-up (beside the checks)"
cat "$logs/lab-up.log"
names+=("lab-up")
if [ "$(cat "$logs/lab-up.rc" 2>/dev/null)" = 0 ]; then results+=("ok"); else results+=("FAILED"); status=1; fi
times+=("$(cat "$logs/lab-up.time" 2>/dev/null || echo '?')")
echo "checks and lab-up done after $((SECONDS - suite_start))s"
phase integration pytest make --no-print-directory integration
phase lab-down    setup  make --no-print-directory lab-down

echo "=== summary"
for i in "${!names[@]}"; do
  printf '%-12s %-7s %4ss\n' "${names[$i]}" "${results[$i]}" "${times[$i]}"
done
echo "suite time: $((SECONDS - suite_start))s"
# A failed setup phase fails the run even when no test counted it.
if [ $status -ne 0 ] && [ $failed -eq 0 ]; then failed=1; fi
echo "tests: $passed passed, $failed failed, $skipped skipped"
exit $status
