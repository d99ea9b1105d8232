#!/usr/bin/env bash
# Local stand-in for Neon's pooled ("-pooler") endpoint:
#   client --TLS + SCRAM password--> PgBouncer (transaction pooling) --trust--> PostgreSQL
#
# Idempotent: safe to run repeatedly. If a PgBouncer started by this script is
# already running with identical configuration, it is left alone; otherwise it is
# (re)started. Human-readable progress goes to stderr; stdout carries only
# KEY=VALUE lines (dotenv / $GITHUB_ENV format, also written to
# $TASKAPI_PGBOUNCER_DIR/env; a shell-sourceable copy is in .../env.sh).
# See README.md in this directory for the environment variables.
set -euo pipefail

RUN_DIR="${TASKAPI_PGBOUNCER_DIR:-/tmp/taskapi-pgbouncer}"
LISTEN_PORT="${TASKAPI_PGBOUNCER_PORT:-6432}"
UPSTREAM_HOST="${TASKAPI_PGBOUNCER_UPSTREAM_HOST:-127.0.0.1}"
UPSTREAM_PORT="${TASKAPI_PGBOUNCER_UPSTREAM_PORT:-5432}"
PG_SUPERUSER="${TASKAPI_PGBOUNCER_PG_SUPERUSER:-postgres}"
RUN_AS="${TASKAPI_PGBOUNCER_RUN_AS:-postgres}"
READY_TIMEOUT="${TASKAPI_PGBOUNCER_READY_TIMEOUT:-30}"
DB_USER="taskapi"
DB_PASSWORD="taskapi-secret"
DB_NAME="taskapi_pooled"
LISTEN_ADDR="127.0.0.1"

log() { printf '[pgbouncer/start] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

START_NS=$(date +%s%N)
[[ "$LISTEN_PORT" =~ ^[0-9]+$ ]] || die "TASKAPI_PGBOUNCER_PORT must be numeric"
[[ "$RUN_DIR" == /* ]] || die "TASKAPI_PGBOUNCER_DIR must be an absolute path"

# ---------------------------------------------------------------- packages
missing=()
command -v pgbouncer >/dev/null 2>&1 || [[ -x /usr/sbin/pgbouncer ]] || missing+=(pgbouncer)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
if ((${#missing[@]})); then
  [[ $EUID -eq 0 ]] || die "missing packages (${missing[*]}) and not root; install them first"
  log "installing ${missing[*]} from Debian apt repos"
  export DEBIAN_FRONTEND=noninteractive
  apt_log=$(mktemp /tmp/taskapi-pgbouncer-apt.XXXXXX)
  if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$apt_log" 2>&1; then
    cat "$apt_log" >&2; rm -f "$apt_log"; die "apt-get install ${missing[*]} failed"
  fi
  rm -f "$apt_log"
  # On hosts with systemd the package enables and starts its own instance on
  # localhost:6432 (/etc/pgbouncer/pgbouncer.ini). We just installed it, so we
  # own it: stop and disable it so it cannot occupy our port.
  if [[ " ${missing[*]} " == *" pgbouncer "* ]] && command -v systemctl >/dev/null 2>&1 \
     && [[ -d /run/systemd/system ]]; then
    systemctl disable --now pgbouncer.service >&2 2>&1 || true
  fi
fi
PGBOUNCER_BIN=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)

# ---------------------------------------------------------------- identity
if [[ $EUID -eq 0 ]]; then
  id "$RUN_AS" >/dev/null 2>&1 || die "user '$RUN_AS' does not exist (set TASKAPI_PGBOUNCER_RUN_AS)"
  # setpriv does not go through PAM, so the raised fd limit below survives
  # (runuser/su apply pam_limits and reset it to the distro default).
  if command -v setpriv >/dev/null 2>&1; then
    as_runner() { setpriv --reuid="$RUN_AS" --regid="$(id -g "$RUN_AS")" --init-groups -- "$@"; }
  else
    as_runner() { runuser -u "$RUN_AS" -- "$@"; }
  fi
  RUN_GROUP=$(id -gn "$RUN_AS")
else
  RUN_AS=$(id -un)                 # pgbouncer refuses root, any other user is fine
  as_runner() { "$@"; }
  RUN_GROUP=$(id -gn)
fi

# ---------------------------------------------------------------- PostgreSQL
pg() { psql -X -q -v ON_ERROR_STOP=1 -h "$UPSTREAM_HOST" -p "$UPSTREAM_PORT" -U "$PG_SUPERUSER" "$@"; }

if ! pg_isready -q -h "$UPSTREAM_HOST" -p "$UPSTREAM_PORT" -t 3; then
  if [[ $EUID -eq 0 && "$UPSTREAM_HOST" =~ ^(127\.0\.0\.1|localhost)$ ]] && command -v pg_ctlcluster >/dev/null 2>&1; then
    for verdir in /etc/postgresql/*/main; do
      [[ -d "$verdir" ]] || continue
      ver=$(basename "$(dirname "$verdir")")
      log "PostgreSQL not answering; starting cluster $ver/main"
      pg_ctlcluster --skip-systemctl-redirect "$ver" main start >&2 || true
    done
    for _ in $(seq 1 50); do pg_isready -q -h "$UPSTREAM_HOST" -p "$UPSTREAM_PORT" && break; sleep 0.2; done
  fi
  pg_isready -q -h "$UPSTREAM_HOST" -p "$UPSTREAM_PORT" || die "PostgreSQL at $UPSTREAM_HOST:$UPSTREAM_PORT is not accepting connections"
fi

# True if SCRAM-SHA-256 verifier $1 (as stored in pg_authid) is for password $2.
# Lets reruns keep the stored verifier (ALTER ROLE ... PASSWORD picks a new salt each time).
scram_matches() {
  local re='^SCRAM-SHA-256[$]([0-9]+):([^$]+)[$]([^:]+):(.+)$' salt_hex salted stored
  [[ "$1" =~ $re ]] || return 1
  salt_hex=$(printf '%s' "${BASH_REMATCH[2]}" | openssl base64 -d -A | od -An -v -tx1 | tr -d ' \n')
  salted=$(openssl kdf -keylen 32 -kdfopt digest:SHA256 -kdfopt "pass:$2" -kdfopt "hexsalt:$salt_hex" \
             -kdfopt "iter:${BASH_REMATCH[1]}" PBKDF2 2>/dev/null | tr -d ':\n') || return 1
  stored=$(printf 'Client Key' | openssl dgst -sha256 -mac HMAC -macopt "hexkey:$salted" -binary \
             | openssl dgst -sha256 -binary | openssl base64 -A)
  [[ -n "$salted" && "$stored" == "${BASH_REMATCH[3]}" ]]
}
read_verifier() {
  pg -d postgres -At -v u="$DB_USER" <<'SQL'
SELECT coalesce(rolpassword, '') FROM pg_authid WHERE rolname = :'u';
SQL
}

log "ensuring role $DB_USER and database $DB_NAME"
pg -d postgres -v u="$DB_USER" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN', :'u')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'u') \gexec
SELECT format('ALTER ROLE %I WITH LOGIN NOSUPERUSER', :'u') \gexec
SQL
if ! scram_matches "$(read_verifier)" "$DB_PASSWORD"; then
  log "setting password for $DB_USER (stored as a SCRAM-SHA-256 verifier)"
  pg -d postgres -v u="$DB_USER" -v p="$DB_PASSWORD" <<'SQL'
SET password_encryption = 'scram-sha-256';
SELECT format('ALTER ROLE %I WITH PASSWORD %L', :'u', :'p') \gexec
SQL
fi
pg -d postgres -v u="$DB_USER" -v d="$DB_NAME" <<'SQL'
SELECT format('CREATE DATABASE %I OWNER %I', :'d', :'u')
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'d') \gexec
SELECT format('ALTER DATABASE %I OWNER TO %I', :'d', :'u') \gexec
SELECT format('GRANT ALL PRIVILEGES ON DATABASE %I TO %I', :'d', :'u') \gexec
SQL
pg -d "$DB_NAME" -v u="$DB_USER" <<'SQL'
SELECT format('GRANT ALL ON SCHEMA public TO %I', :'u') \gexec
SQL
SCRAM_SECRET=$(read_verifier)
scram_matches "$SCRAM_SECRET" "$DB_PASSWORD" || die "could not read a valid SCRAM verifier for $DB_USER"

# ---------------------------------------------------------------- runtime dir
if [[ -e "$RUN_DIR" ]]; then
  [[ -d "$RUN_DIR" && ! -L "$RUN_DIR" ]] || die "$RUN_DIR exists and is not a directory"
  owner=$(stat -c %U "$RUN_DIR")
  [[ "$owner" == "$RUN_AS" || "$owner" == "$(id -un)" ]] || die "$RUN_DIR is owned by $owner; refusing to use it"
else
  mkdir -p "$RUN_DIR"
fi
chmod 0755 "$RUN_DIR"

# ---------------------------------------------------------------- TLS material
CA_KEY="$RUN_DIR/ca.key"; CA_CRT="$RUN_DIR/ca.crt"
SRV_KEY="$RUN_DIR/server.key"; SRV_CRT="$RUN_DIR/server.crt"

certs_ok() {
  [[ -s "$CA_CRT" && -s "$SRV_KEY" && -s "$SRV_CRT" ]] || return 1
  openssl verify -CAfile "$CA_CRT" -purpose sslserver "$SRV_CRT" >/dev/null 2>&1 || return 1
  openssl x509 -in "$SRV_CRT" -noout -checkend 86400 >/dev/null 2>&1 || return 1
  openssl x509 -in "$SRV_CRT" -noout -checkhost localhost 2>/dev/null | grep -q 'does match' || return 1
  openssl x509 -in "$SRV_CRT" -noout -checkip 127.0.0.1 2>/dev/null | grep -q 'does match' || return 1
  # key belongs to cert
  [[ "$(openssl pkey -in "$SRV_KEY" -pubout 2>/dev/null)" == "$(openssl x509 -in "$SRV_CRT" -noout -pubkey)" ]]
}

if certs_ok; then
  log "reusing TLS material in $RUN_DIR"
else
  log "generating self-signed CA and server certificate (CN/SAN localhost, IP 127.0.0.1)"
  tmp=$(mktemp -d "$RUN_DIR/.certs.XXXXXX")
  (
    cd "$tmp"
    umask 077
    openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
      -keyout ca.key -out ca.crt -days 3650 -sha256 \
      -subj "/CN=taskapi local pgbouncer CA" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -addext "subjectKeyIdentifier=hash" 2>/dev/null
    openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
      -keyout server.key -out server.csr -subj "/CN=localhost" 2>/dev/null
    cat > server.ext <<'EOF'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid,issuer
EOF
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
      -out server.crt -days 825 -sha256 -extfile server.ext 2>/dev/null
  )
  mv -f "$tmp/ca.key" "$CA_KEY"; mv -f "$tmp/ca.crt" "$CA_CRT"
  mv -f "$tmp/server.key" "$SRV_KEY"; mv -f "$tmp/server.crt" "$SRV_CRT"
  rm -rf "$tmp"
  certs_ok || die "generated certificate failed verification"
fi
chmod 0644 "$CA_CRT" "$SRV_CRT"; chmod 0600 "$CA_KEY" "$SRV_KEY"

# ---------------------------------------------------------------- config
INI="$RUN_DIR/pgbouncer.ini"; USERLIST="$RUN_DIR/userlist.txt"
PIDFILE="$RUN_DIR/pgbouncer.pid"; LOGFILE="$RUN_DIR/pgbouncer.log"

NEW_INI=$(cat <<EOF
;; Generated by scripts/pgbouncer/start.sh -- do not edit, re-run the script.
;; Modelled on Neon's compute/etc/pgbouncer.ini (neondatabase/neon).
[databases]
* = host=$UPSTREAM_HOST port=$UPSTREAM_PORT

[pgbouncer]
listen_addr = $LISTEN_ADDR
listen_port = $LISTEN_PORT
;; TCP only: an open unix socket would be a way around the TLS requirement.
unix_socket_dir =
pidfile = $PIDFILE
logfile = $LOGFILE

pool_mode = transaction
max_client_conn = 1000
default_pool_size = 20
query_wait_timeout = 120

;; Clients: password auth (SCRAM verifier copied from pg_authid) over mandatory TLS.
;; Server side: plain TCP to a trust-auth PostgreSQL.
auth_type = scram-sha-256
auth_file = $USERLIST
client_tls_sslmode = require
client_tls_key_file = $SRV_KEY
client_tls_cert_file = $SRV_CRT
client_tls_protocols = secure
server_tls_sslmode = disable

;; Same as Neon's pooler: only extra_float_digits (sent by psycopg/pgjdbc) is
;; ignored; any other startup parameter (search_path, statement_timeout,
;; options=-c..., channel_binding, ...) fails with "unsupported startup parameter".
ignore_startup_parameters = extra_float_digits

log_connections = 0
log_disconnections = 0
EOF
)
NEW_USERLIST=$(printf '"%s" "%s"' "$DB_USER" "$SCRAM_SECRET")

running_pid() {
  local pid
  [[ -s "$PIDFILE" ]] || return 1
  pid=$(tr -dc 0-9 < "$PIDFILE")
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
  [[ "$(cat /proc/"$pid"/comm 2>/dev/null)" == pgbouncer ]] || return 1
  [[ "$(awk '{print $3}' /proc/"$pid"/stat 2>/dev/null)" != Z ]] || return 1   # killed, not yet reaped
  echo "$pid"
}

client_check() {
  PGPASSWORD="$DB_PASSWORD" PGCONNECT_TIMEOUT=3 psql -X -At \
    "host=localhost port=$LISTEN_PORT dbname=$DB_NAME user=$DB_USER sslmode=verify-full sslrootcert=$CA_CRT" \
    -c "select 1" >/dev/null 2>&1
}

CERT_SUM=$(cat "$SRV_CRT" "$SRV_KEY" | sha256sum | cut -d' ' -f1)
NEW_STATE=$(printf '%s\n%s\n%s\n' "$NEW_INI" "$NEW_USERLIST" "$CERT_SUM" | sha256sum | cut -d' ' -f1)
OLD_STATE=$(cat "$RUN_DIR/.state" 2>/dev/null || true)

action=start
if pid=$(running_pid); then
  if [[ "$NEW_STATE" == "$OLD_STATE" ]] && client_check; then
    action=keep
    log "already running (pid $pid) with identical configuration; leaving it alone"
  else
    log "running (pid $pid) with different configuration; restarting"
    TASKAPI_PGBOUNCER_DIR="$RUN_DIR" "$(dirname "$0")/stop.sh" >&2
  fi
fi

if [[ $action == start ]]; then
  rm -f "$PIDFILE"   # stale pidfile (process is gone)
  if (exec 3<>"/dev/tcp/$LISTEN_ADDR/$LISTEN_PORT") 2>/dev/null; then
    command -v ss >/dev/null 2>&1 && ss -Hltnp "sport = :$LISTEN_PORT" >&2
    die "port $LISTEN_PORT is already in use by another process (set TASKAPI_PGBOUNCER_PORT;
  if it is Debian's own pgbouncer.service: systemctl disable --now pgbouncer)"
  fi
  printf '%s\n' "$NEW_INI" > "$INI"
  printf '%s\n' "$NEW_USERLIST" > "$USERLIST"
  chmod 0600 "$INI" "$USERLIST"
  touch "$LOGFILE"
  if [[ $EUID -eq 0 ]]; then
    chown "$RUN_AS:$RUN_GROUP" "$RUN_DIR" "$INI" "$USERLIST" "$SRV_KEY" "$SRV_CRT" "$LOGFILE"
  fi
  # Each client and server connection is a file descriptor.
  if (( $(ulimit -Sn) < 4096 )); then
    ulimit -Sn 4096 2>/dev/null || ulimit -n 4096 2>/dev/null || ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true
  fi
  log "starting $("$PGBOUNCER_BIN" --version | head -1) as $RUN_AS on $LISTEN_ADDR:$LISTEN_PORT"
  as_runner "$PGBOUNCER_BIN" -d -q "$INI" || { tail -n 20 "$LOGFILE" >&2; die "pgbouncer failed to start"; }

  deadline=$(( $(date +%s) + READY_TIMEOUT ))
  until client_check; do
    if (( $(date +%s) >= deadline )); then
      tail -n 20 "$LOGFILE" >&2
      die "pgbouncer did not accept an authenticated TLS connection within ${READY_TIMEOUT}s"
    fi
    sleep 0.1
  done
  printf '%s\n' "$NEW_STATE" > "$RUN_DIR/.state"
fi

ELAPSED_MS=$(( ($(date +%s%N) - START_NS) / 1000000 ))
log "ready in ${ELAPSED_MS} ms (pid $(running_pid), log $LOGFILE)"

# Neon's URLs end in channel_binding=require. Offer it only if the pooler really
# does SCRAM-SHA-256-PLUS (PgBouncer, 1.18 included, does not: libpq then fails
# with "server did not offer an authentication method that supports channel binding").
QUERY="sslmode=require"
if PGPASSWORD="$DB_PASSWORD" PGCONNECT_TIMEOUT=3 psql -X -At -c "select 1" \
     "host=localhost port=$LISTEN_PORT dbname=$DB_NAME user=$DB_USER sslmode=require channel_binding=require" \
     >/dev/null 2>&1; then
  QUERY="sslmode=require&channel_binding=require"
  log "pooler supports SCRAM channel binding; URL includes channel_binding=require"
else
  log "pooler does not offer SCRAM-SHA-256-PLUS (channel binding); URL has sslmode=require only"
fi
URL="postgresql://$DB_USER:$DB_PASSWORD@localhost:$LISTEN_PORT/$DB_NAME?$QUERY"
URL_VERIFY="postgresql://$DB_USER:$DB_PASSWORD@localhost:$LISTEN_PORT/$DB_NAME?sslmode=verify-full&sslrootcert=$CA_CRT"
{
  printf 'TASKAPI_PGBOUNCER_URL=%s\n' "$URL"
  printf 'TASKAPI_PGBOUNCER_URL_VERIFY_FULL=%s\n' "$URL_VERIFY"
  printf 'TASKAPI_PGBOUNCER_CA_FILE=%s\n' "$CA_CRT"
} | tee "$RUN_DIR/env"
sed -E "s/^([A-Z_]+)=(.*)$/export \1='\2'/" "$RUN_DIR/env" > "$RUN_DIR/env.sh"
