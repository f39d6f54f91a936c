#!/usr/bin/env bash
# Runs the native addon's tests (test/unit/native-addon.test.ts) with the test process under
# valgrind memcheck, then reports memory errors and definite leaks whose stacks pass through the
# addon. Slow (a few minutes); not part of CI.
#
#   scripts/valgrind-addon.sh            # KMSD_NATIVE_LEAK_OPS defaults to 2000 here
#   KEEP_LOGS=1 scripts/valgrind-addon.sh
#
# Only vitest's test worker runs under valgrind, not vitest itself: a preload swaps the worker's
# fork() for `sh -c 'valgrind node … & wait'`. The shell in between matters: at teardown vitest
# sends SIGTERM and, 500 ms later, SIGKILL, which would cut valgrind's leak check short; they reach
# the shell instead, and this script lets the valgrind'ed worker finish (or SIGTERMs it, without a
# SIGKILL after) and waits for its report.
#
# Exit status: 0 clean, 1 addon errors or leaks found (or tests failed), 2 setup problem.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

command -v valgrind >/dev/null || { echo "valgrind not found (apt-get install valgrind)" >&2; exit 2; }
if [[ ! -f build/Release/kmsd_native.node ]]; then
  npx node-gyp rebuild >/dev/null || { echo "native build failed" >&2; exit 2; }
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/kmsd-valgrind-XXXXXX")"
cleanup() { if [[ -z "${KEEP_LOGS:-}" ]]; then rm -rf "$work"; else echo "logs kept in $work"; fi; }
trap cleanup EXIT

cat >"$work/preload.cjs" <<'EOF'
// Loaded into vitest's main process only (-r); see scripts/valgrind-addon.sh.
const cp = require('node:child_process');
const { syncBuiltinESMExports } = require('node:module');
const fork = cp.fork;
const valgrind = [
  'valgrind', '--tool=memcheck', '--leak-check=full', '--show-leak-kinds=definite',
  '--errors-for-leak-kinds=definite', '--num-callers=40', '--trace-children=no',
  `--log-file=${process.env.KMSD_VALGRIND_DIR}/vg.%p.log`,
];
cp.fork = function forkUnderValgrind(modulePath, args = [], options = {}) {
  const execArgv = options.execArgv ?? process.execArgv;
  return fork(modulePath, args, {
    ...options,
    execPath: '/bin/sh',
    // $0.. are the node command line; the shell waits on valgrind but dies alone when signalled.
    execArgv: ['-c', `${valgrind.join(' ')} "$0" "$@" & wait`, process.execPath, ...execArgv],
  });
};
syncBuiltinESMExports();
EOF

echo "running the addon tests under valgrind (this takes a few minutes)..."
status=0
KMSD_VALGRIND_DIR="$work" KMSD_NATIVE_LEAK_OPS="${KMSD_NATIVE_LEAK_OPS:-2000}" \
  node -r "$work/preload.cjs" node_modules/vitest/vitest.mjs run test/unit/native-addon.test.ts \
  --pool=forks --maxWorkers=1 --testTimeout=1200000 --hookTimeout=1200000 || status=$?

# Wait for every valgrind'ed worker to write its final report (valgrind exits after writing it).
# A worker whose parent has gone normally exits by itself; give it a minute, then SIGTERM
# (valgrind still reports after that). Logs without a summary belong to processes the worker
# spawned (fork, then exec of an untraced program such as softhsm2-util) and are skipped.
shopt -s nullglob
for log in "$work"/vg.*.log; do
  pid="${log##*/vg.}"; pid="${pid%.log}"
  for ((i = 0; i < 600 && $(kill -0 "$pid" 2>/dev/null && echo 1 || echo 0); i++)); do
    if ((i == 60)); then kill -TERM "$pid" 2>/dev/null || true; fi
    sleep 1
  done
done
logs=()
for log in "$work"/vg.*.log; do grep -q "ERROR SUMMARY" "$log" && logs+=("$log"); done
if [[ ${#logs[@]} -eq 0 ]]; then echo "no complete valgrind report was written" >&2; exit 2; fi

# Error and leak records are blank-line separated blocks; keep the ones that involve the addon.
addon_records() {
  awk -v RS='==[0-9]+== \n' '/kmsd_native|kmsd::/ && /Invalid|uninitialised|Uninitialised|Mismatched|definitely lost|overlap|Syscall param/' "$@"
}
found="$(addon_records "${logs[@]}")"

for log in "${logs[@]}"; do
  echo "--- ${log##*/}: $(grep -m1 'Command:' "$log" | sed 's/.*Command: //' | cut -c1-120)"
  grep -E "ERROR SUMMARY|definitely lost:|indirectly lost:|possibly lost:" "$log" | sed 's/^==[0-9]*== /    /' || true
done
if [[ -n "$found" ]]; then
  echo
  echo "valgrind found problems in the addon:"
  echo "$found"
  exit 1
fi
if ((status != 0)); then echo "the tests failed under valgrind (exit $status)" >&2; exit 1; fi
echo "no addon errors or definite leaks"
