#!/usr/bin/env bash
# A private PostgreSQL cluster and an MLflow tracking server on it, both on loopback only.
#
#   infra/mlflow/start_local.sh start    initialise (first time), start both, print the tracking URI
#   infra/mlflow/start_local.sh stop     stop both (the data stays for the next start)
#   infra/mlflow/start_local.sh status   say what runs, and the URIs
#
# Settings (environment):
#   DPSWEEP_MLFLOW_HOME  state folder: pgdata/, artifacts/, logs, pid file, password
#                        (default: /var/lib/dpsweep-mlflow as root, else
#                        ${XDG_STATE_HOME:-~/.local/state}/dpsweep-mlflow)
#   PG_PORT              PostgreSQL port on 127.0.0.1 (default 5433, not the system cluster's 5432)
#   MLFLOW_PORT          MLflow server port on 127.0.0.1 (default 5000)
#   PG_BIN               folder with initdb and pg_ctl (default: found from pg_config or
#                        /usr/lib/postgresql/*/bin)
#   PYTHON               the Python that has mlflow[auth] and psycopg (default: python3)
#   MLFLOW_AUTH_ADMIN_USERNAME, MLFLOW_AUTH_ADMIN_PASSWORD
#                        the MLflow admin account (required; there is no default). The first start
#                        creates it; MLflow ignores the password once the account exists (change it
#                        with the update-password API, infra/README.md)
#   MLFLOW_FLASK_SERVER_SECRET_KEY
#                        the auth app's CSRF key (default: one drawn on the first start and kept,
#                        owner-only, in the state folder)
#
# The server runs MLflow's authentication (`mlflow server --app-name basic-auth`): every request
# but /health needs an account. Its users live in a second database of the same cluster
# (mlflow_auth); every signed-in user may read every experiment, and writes need an experiment
# they created or were granted EDIT on (infra/README.md: adding users).
#
# The system's PostgreSQL service is left alone: this cluster is the script's own, run by the
# invoking user, or by the `postgres` user when invoked as root (PostgreSQL refuses to run as
# root). Exit codes: 0 done, 1 failed (the log tail says why), 2 a required setting is missing,
# 3 PostgreSQL is not installed.
set -euo pipefail

HOME_DIR="${DPSWEEP_MLFLOW_HOME:-}"
if [[ -z "$HOME_DIR" ]]; then
    if [[ $EUID -eq 0 ]]; then HOME_DIR=/var/lib/dpsweep-mlflow; else HOME_DIR="${XDG_STATE_HOME:-$HOME/.local/state}/dpsweep-mlflow"; fi
fi
PG_PORT="${PG_PORT:-5433}"
MLFLOW_PORT="${MLFLOW_PORT:-5000}"
PYTHON="${PYTHON:-python3}"
PGDATA="$HOME_DIR/pgdata"
PGPASSFILE="$HOME_DIR/pgpass"
export PGPASSFILE
DB_USER=mlflow
DB_NAME=mlflow
AUTH_DB_NAME=mlflow_auth  # MLflow's user store: its own database, apart from the tracking schema
DB_ADDRESS="$DB_USER@127.0.0.1:$PG_PORT/$DB_NAME"  # the password comes from $PGPASSFILE
AUTH_CONFIG="$HOME_DIR/basic_auth.ini"
FLASK_KEY_FILE="$HOME_DIR/flask-secret-key"
TRACKING_URI="http://127.0.0.1:$MLFLOW_PORT"

die() { echo "start_local.sh: $*" >&2; exit 1; }
missing() { echo "start_local.sh: $*" >&2; exit 2; }

# MLflow reaches PostgreSQL through SQLAlchemy, which needs a driver in $PYTHON: psycopg 3 (what
# SQLAlchemy 2.1 picks for postgresql://) or psycopg2. Named explicitly so the choice is visible.
backend_uri() {
    local driver
    driver=$("$PYTHON" -c 'import importlib.util as u; print(next((d for d in ("psycopg", "psycopg2") if u.find_spec(d)), ""))')
    [[ -n "$driver" ]] || die "$PYTHON has no PostgreSQL driver for MLflow: pip install 'psycopg[binary]'"
    echo "postgresql+$driver://$DB_ADDRESS"
}

# The auth app's settings. No password in the file: the driver (libpq) reads it from
# $PGPASSFILE, as for the tracking store; the admin account comes from the environment.
write_auth_config() {
    local backend=$1
    (umask 077; printf '%s\n' "# Written by infra/mlflow/start_local.sh on every start." "[mlflow]" \
        "default_permission = READ" "database_uri = ${backend%/*}/$AUTH_DB_NAME" \
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth" > "$AUTH_CONFIG")
}

# The CSRF key must stay the same across restarts and workers: drawn once, kept owner-only.
flask_secret_key() {
    if [[ -n "${MLFLOW_FLASK_SERVER_SECRET_KEY:-}" ]]; then echo "$MLFLOW_FLASK_SERVER_SECRET_KEY"; return; fi
    if [[ ! -s "$FLASK_KEY_FILE" ]]; then
        (umask 077; "$PYTHON" -c 'import secrets; print(secrets.token_hex(32))' > "$FLASK_KEY_FILE")
    fi
    cat "$FLASK_KEY_FILE"
}

find_pg_bin() {
    if [[ -n "${PG_BIN:-}" ]]; then
        if [[ -x "$PG_BIN/initdb" && -x "$PG_BIN/pg_ctl" ]]; then echo "$PG_BIN"; return; fi
        echo "start_local.sh: PG_BIN=$PG_BIN has no initdb and pg_ctl. Install PostgreSQL" \
             "(Debian/Ubuntu: apt-get install -y postgresql) or point PG_BIN at its programs." >&2
        exit 3
    fi
    if command -v pg_config >/dev/null && [[ -x "$(pg_config --bindir)/initdb" ]]; then pg_config --bindir; return; fi
    local newest
    newest=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [[ -n "$newest" && -x "$newest/initdb" ]]; then echo "$newest"; return; fi
    if command -v initdb >/dev/null; then dirname "$(command -v initdb)"; return; fi
    echo "start_local.sh: PostgreSQL's server programs (initdb, pg_ctl) were not found. Install them" \
         "(Debian/Ubuntu: apt-get install -y postgresql) or set PG_BIN to their folder." >&2
    exit 3
}

# Run a PostgreSQL server program as the cluster's owner.
as_owner() {
    if [[ $EUID -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

mlflow_pid() {
    [[ -f "$HOME_DIR/mlflow.pid" ]] && kill -0 "$(cat "$HOME_DIR/mlflow.pid")" 2>/dev/null && cat "$HOME_DIR/mlflow.pid"
}

init_cluster() {
    local pg_bin=$1
    mkdir -p "$HOME_DIR/artifacts"
    chmod 755 "$HOME_DIR"
    if [[ $EUID -eq 0 ]]; then
        id postgres >/dev/null 2>&1 || die "running as root needs the 'postgres' user (created by Debian's postgresql package)."
        runuser -u postgres -- test -x "$HOME_DIR" ||
            die "the postgres user cannot enter $HOME_DIR (a parent folder is private); set DPSWEEP_MLFLOW_HOME elsewhere."
    fi
    [[ -f "$PGDATA/PG_VERSION" ]] && return
    local password
    password=$("$PYTHON" -c 'import secrets; print(secrets.token_hex(16))')
    umask 077
    printf '127.0.0.1:*:*:%s:%s\n' "$DB_USER" "$password" > "$PGPASSFILE"
    rm -rf "$PGDATA"
    mkdir -p "$PGDATA"
    local pwfile="$HOME_DIR/.initdb-password"
    printf '%s\n' "$password" > "$pwfile"
    if [[ $EUID -eq 0 ]]; then chown postgres: "$PGDATA" "$pwfile"; fi
    if ! as_owner "$pg_bin/initdb" -D "$PGDATA" -U "$DB_USER" --pwfile="$pwfile" --auth=scram-sha-256 \
            -E UTF8 --no-locale >"$HOME_DIR/initdb.log" 2>&1; then
        rm -f "$pwfile"
        tail -n 20 "$HOME_DIR/initdb.log" >&2
        die "initdb failed"
    fi
    rm -f "$pwfile"
    umask 022
    # Loopback only, TCP only: no Unix socket in a system folder this cluster does not own.
    as_owner sh -c "printf '%s\n' \"listen_addresses = '127.0.0.1'\" \"unix_socket_directories = ''\" >> '$PGDATA/postgresql.conf'"
}

start() {
    local pg_bin backend
    pg_bin=$(find_pg_bin)
    backend=$(backend_uri)
    [[ -n "${MLFLOW_AUTH_ADMIN_USERNAME:-}" ]] ||
        missing "set MLFLOW_AUTH_ADMIN_USERNAME (and, on the first start, MLFLOW_AUTH_ADMIN_PASSWORD):" \
                "the MLflow admin account this server creates; there is no default."
    "$PYTHON" -c 'import flask_wtf' 2>/dev/null ||
        die "$PYTHON lacks MLflow's auth extra: pip install 'mlflow[auth]' (or pip install -e '.[server]')"
    init_cluster "$pg_bin"
    if ! as_owner "$pg_bin/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
        touch "$HOME_DIR/postgres.log"
        if [[ $EUID -eq 0 ]]; then chown postgres: "$HOME_DIR/postgres.log"; fi
        as_owner "$pg_bin/pg_ctl" -D "$PGDATA" -l "$HOME_DIR/postgres.log" -o "-p $PG_PORT" -w -t 120 start >/dev/null ||
            { tail -n 20 "$HOME_DIR/postgres.log" >&2; die "PostgreSQL did not start on 127.0.0.1:$PG_PORT"; }
    fi
    local exists
    exists=$("$pg_bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U "$DB_USER" -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'") || die "cannot connect to PostgreSQL on 127.0.0.1:$PG_PORT"
    if [[ "$exists" != 1 ]]; then
        "$pg_bin/createdb" -h 127.0.0.1 -p "$PG_PORT" -U "$DB_USER" "$DB_NAME" || die "createdb $DB_NAME failed"
    fi
    exists=$("$pg_bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U "$DB_USER" -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = '$AUTH_DB_NAME'") || die "cannot connect to PostgreSQL on 127.0.0.1:$PG_PORT"
    if [[ "$exists" != 1 ]]; then
        # A new user store: this start creates the admin account, so it needs its password.
        [[ -n "${MLFLOW_AUTH_ADMIN_PASSWORD:-}" ]] ||
            missing "set MLFLOW_AUTH_ADMIN_PASSWORD: the first start creates the MLflow admin account" \
                    "'$MLFLOW_AUTH_ADMIN_USERNAME' with it (for example, export MLFLOW_AUTH_ADMIN_PASSWORD=\$(openssl rand -hex 16))."
        "$pg_bin/createdb" -h 127.0.0.1 -p "$PG_PORT" -U "$DB_USER" "$AUTH_DB_NAME" || die "createdb $AUTH_DB_NAME failed"
    fi
    write_auth_config "$backend"

    if [[ -z "$(mlflow_pid || true)" ]]; then
        # Its own session, so that stop can end the server and its workers together. MLflow reads
        # the admin account from this environment (MLFLOW_AUTH_ADMIN_*); nothing here prints it.
        MLFLOW_AUTH_CONFIG_PATH="$AUTH_CONFIG" MLFLOW_FLASK_SERVER_SECRET_KEY="$(flask_secret_key)" \
            setsid "$PYTHON" -m mlflow server --app-name basic-auth --backend-store-uri "$backend" \
            --artifacts-destination "$HOME_DIR/artifacts" --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 \
            >"$HOME_DIR/mlflow.log" 2>&1 < /dev/null &
        echo $! > "$HOME_DIR/mlflow.pid"
    fi
    local deadline=$((SECONDS + ${MLFLOW_START_TIMEOUT:-180}))
    until "$PYTHON" -c "import urllib.request as u; u.urlopen('$TRACKING_URI/health', timeout=5)" 2>/dev/null; do
        if [[ -z "$(mlflow_pid || true)" ]]; then tail -n 30 "$HOME_DIR/mlflow.log" >&2; die "the MLflow server exited"; fi
        if (( SECONDS > deadline )); then tail -n 30 "$HOME_DIR/mlflow.log" >&2; die "the MLflow server did not answer at $TRACKING_URI"; fi
        sleep 1
    done
    echo "PostgreSQL: $backend (password in $PGPASSFILE)"
    echo "artifacts:  $HOME_DIR/artifacts (served by the MLflow server)"
    echo "auth:       MLflow basic-auth; admin account '$MLFLOW_AUTH_ADMIN_USERNAME'; users in database $AUTH_DB_NAME"
    echo "MLFLOW_TRACKING_URI=$TRACKING_URI"
}

stop() {
    local pid
    pid=$(mlflow_pid || true)
    if [[ -n "$pid" ]]; then
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 10); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
        kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    rm -f "$HOME_DIR/mlflow.pid"
    if [[ -f "$PGDATA/PG_VERSION" ]]; then
        local pg_bin
        pg_bin=$(find_pg_bin)
        as_owner "$pg_bin/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null 2>&1 || true
    fi
    echo "stopped (data kept in $HOME_DIR)"
}

status() {
    local pid
    pid=$(mlflow_pid || true)
    if [[ -n "$pid" ]]; then echo "MLflow server: running (pid $pid) at $TRACKING_URI"; else echo "MLflow server: not running"; fi
    if [[ -f "$PGDATA/PG_VERSION" ]]; then
        as_owner "$(find_pg_bin)/pg_ctl" -D "$PGDATA" status | head -n 1 || true
    else
        echo "PostgreSQL: not initialised in $PGDATA"
    fi
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac
