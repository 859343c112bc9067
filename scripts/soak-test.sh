#!/usr/bin/env bash
# `npm test` several times in a row (default 3) with a busy neighbour occupying one core, then a check that the
# runs left nothing behind: no file in /dev/shm or /dev/mqueue, no System V segment, queue or semaphore set, no
# process. Exit status 0 only if every run passed and nothing was left.
#   scripts/soak-test.sh [runs]        (npm run test:soak)
# Logs: .tap/soak/run-<n>.log. On a machine where other programs use shared memory meanwhile, what they create shows
# up in the comparison too: read the list before blaming the tests.
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
mkdir -p .tap/soak

# mq: queues are visible only where the mqueue file system is mounted.
if ! grep -qs ' /dev/mqueue mqueue ' /proc/mounts; then
  mkdir -p /dev/mqueue 2>/dev/null && mount -t mqueue none /dev/mqueue 2>/dev/null || echo "note: /dev/mqueue is not mounted; POSIX queues are not checked"
fi

objects() {
  ls -1 /dev/shm 2>/dev/null | sed 's|^|/dev/shm/|'
  ls -1 /dev/mqueue 2>/dev/null | sed 's|^|/dev/mqueue/|'
  ipcs -m | awk '$1 ~ /^0x/ { print "shm key=" $1 " id=" $2 }'
  ipcs -q | awk '$1 ~ /^0x/ { print "msg key=" $1 " id=" $2 }'
  ipcs -s | awk '$1 ~ /^0x/ { print "sem key=" $1 " id=" $2 }'
}
# Processes started from this checkout (fixtures, peers, tap's workers), other than this script's own.
processes() {
  pgrep -af "$(pwd)/(dist|test|node_modules/tap|node_modules/@tapjs)" | grep -v -e "$$" -e pgrep || true
}

objects | sort > .tap/soak/before.txt
node -e 'for(;;);' &
neighbour=$!
trap 'kill "$neighbour" 2>/dev/null' EXIT
echo "busy neighbour: pid $neighbour ($(nproc) CPUs)"

failed=0
for i in $(seq "$runs"); do
  start=$(date +%s)
  npm test > ".tap/soak/run-$i.log" 2>&1
  rc=$?
  echo "run $i: exit $rc in $(( $(date +%s) - start )) s (log .tap/soak/run-$i.log)"
  [ "$rc" -eq 0 ] || failed=1
done
kill "$neighbour" 2>/dev/null
wait "$neighbour" 2>/dev/null
trap - EXIT

objects | sort > .tap/soak/after.txt
left=$(comm -13 .tap/soak/before.txt .tap/soak/after.txt)
if [ -n "$left" ]; then
  echo "left behind (new since the first run started):"
  echo "$left" | sed 's/^/  /'
  failed=1
else
  echo "nothing new in /dev/shm, /dev/mqueue or System V IPC"
fi
procs=$(processes)
if [ -n "$procs" ]; then
  echo "processes still running:"
  echo "$procs" | sed 's/^/  /'
  failed=1
else
  echo "no process of the runs is left"
fi
exit "$failed"
