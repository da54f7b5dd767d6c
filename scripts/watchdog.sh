#!/usr/bin/env bash
# Runs a command with a time limit. Past the limit it prints the threads' stacks of every
# process the command started (with gdb, when installed; their command lines otherwise), then
# stops them all and exits 124: a test that hangs fails CI within minutes, naming where it
# waits, instead of holding CI until its own limit.
#
#   scripts/watchdog.sh SECONDS COMMAND [ARG...]
set -uo pipefail

if [ $# -lt 2 ]; then
  echo "usage: $0 SECONDS COMMAND [ARG...]" >&2
  exit 2
fi
limit=$1
shift

# A session of its own, so that everything the command starts can be found and stopped.
setsid "$@" &
leader=$!
start=$SECONDS
while kill -0 "$leader" 2>/dev/null; do
  if [ $((SECONDS - start)) -ge "$limit" ]; then
    echo "watchdog: '$*' still running after ${limit}s; its processes:" >&2
    for pid in $(pgrep -s "$leader"); do
      echo "--- pid $pid: $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" >&2
      if command -v gdb >/dev/null 2>&1; then
        gdb -p "$pid" -batch -ex "thread apply all bt 30" 2>/dev/null |
          grep -E '^(Thread|#)' >&2
      fi
    done
    kill -TERM -- "-$leader" 2>/dev/null
    sleep 5
    kill -KILL -- "-$leader" 2>/dev/null
    wait "$leader" 2>/dev/null
    exit 124
  fi
  sleep 2
done
wait "$leader"
