#!/usr/bin/env bash
# Stop the PgBouncer started by scripts/pgbouncer/start.sh (found via its pidfile).
# Safe shutdown first (SIGINT: let in-flight transactions finish), then SIGTERM
# (immediate shutdown), then SIGKILL. A no-op if it is not running.
set -euo pipefail

RUN_DIR="${TASKAPI_PGBOUNCER_DIR:-/tmp/taskapi-pgbouncer}"
SAFE_TIMEOUT="${TASKAPI_PGBOUNCER_STOP_TIMEOUT:-10}"
PIDFILE="$RUN_DIR/pgbouncer.pid"

log() { printf '[pgbouncer/stop] %s\n' "$*" >&2; }

pid=""
if [[ -s "$PIDFILE" ]]; then
  pid=$(tr -dc 0-9 < "$PIDFILE")
fi
if [[ -z "$pid" ]] || ! kill -0 "$pid" 2>/dev/null \
   || [[ "$(cat /proc/"$pid"/comm 2>/dev/null)" != pgbouncer ]] \
   || [[ "$(awk '{print $3}' /proc/"$pid"/stat 2>/dev/null)" == Z ]]; then
  log "not running (no live pgbouncer behind $PIDFILE)"
  rm -f "$PIDFILE" "$RUN_DIR/.state"
  exit 0
fi

wait_gone() {  # $1 = seconds
  local end=$(( $(date +%s%N) + $1 * 1000000000 ))
  while kill -0 "$pid" 2>/dev/null && [[ "$(awk '{print $3}' /proc/"$pid"/stat 2>/dev/null)" != Z ]]; do
    (( $(date +%s%N) >= end )) && return 1
    sleep 0.1
  done
}

log "stopping pgbouncer pid $pid (safe shutdown)"
kill -INT "$pid" 2>/dev/null || true
if ! wait_gone "$SAFE_TIMEOUT"; then
  log "still running after ${SAFE_TIMEOUT}s; immediate shutdown (SIGTERM)"
  kill -TERM "$pid" 2>/dev/null || true
  if ! wait_gone 5; then
    log "still running; SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait_gone 5 || { log "ERROR: pid $pid survived SIGKILL"; exit 1; }
  fi
fi
rm -f "$PIDFILE" "$RUN_DIR/.state"
log "stopped"
