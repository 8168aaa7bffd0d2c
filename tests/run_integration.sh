#!/usr/bin/env bash
# The integration tests as two pytest streams at once, on the same lab: the kernel hosts' tests
# (User-mode Linux hosts spend most of their time waiting on slow forks and boots) beside the
# namespace hosts' tests. Neither touches the other's hosts. The kernel stream's output is
# printed whole when both are done, after the namespace stream's; each ends with its own
# closing line and slowest tests. Exit status: non-zero when either stream failed.
# Arguments are passed to both pytest runs (e.g. -x); KERNEL_TESTS=0 runs one stream only.
set -u -o pipefail
cd "$(dirname "$0")/.." || exit 2
python=${VENV_PYTHON:-.venv/bin/python}
lab_id=${VIRTNODE_LAB_ID:-0}
# Files whose tests run on kernel hosts or bring up hosts of their own.
kernel_files=(tests/integration/test_kernel_*.py tests/integration/test_lab_lifecycle.py
              tests/integration/test_roles_systemd.py)
ignore=()
for f in "${kernel_files[@]}"; do ignore+=("--ignore=$f"); done

if [ "${KERNEL_TESTS:-1}" = 0 ]; then
  exec "$python" -m pytest -v -rs --durations=40 "$@" tests/integration
fi

kernel_log=$(mktemp)
trap 'rm -f "$kernel_log"' EXIT
# Separate temporary roots: each pytest cleans up its own numbered directories.
"$python" -m pytest -v -rs --durations=15 --basetemp="/tmp/virtnode-it$lab_id-kernel" "$@" \
  "${kernel_files[@]}" >"$kernel_log" 2>&1 &
kernel_pid=$!
echo "=== integration on kernel hosts: started beside the namespace hosts' tests (printed at the end)"

"$python" -m pytest -v -rs --durations=30 --basetemp="/tmp/virtnode-it$lab_id-ns" "$@" \
  "${ignore[@]}" tests/integration
namespace_status=$?

wait "$kernel_pid"
kernel_status=$?
echo "=== integration on kernel hosts (exit $kernel_status)"
cat "$kernel_log"
[ "$namespace_status" -eq 0 ] && [ "$kernel_status" -eq 0 ]
