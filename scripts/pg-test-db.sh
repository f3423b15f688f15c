#!/usr/bin/env bash
# Starts a throwaway PostgreSQL cluster for the store's Postgres tests and prints its URL.
#
#   url=$(scripts/pg-test-db.sh)            # start; prints postgres://postgres@127.0.0.1:PORT/dialtone_test
#   DIALTONE_TEST_POSTGRES_URL=$url cargo test store::
#   scripts/pg-test-db.sh stop "$url"       # stop it and delete its files
#
# The cluster lives in a fresh /tmp/dialtone-pg.XXXXXX directory, listens on 127.0.0.1
# only, on a free port, with trust authentication and fsync off: for tests, never for data
# you want to keep. When run as root the server runs as the `postgres` user (initdb refuses
# root). Only the URL goes to stdout; progress goes to stderr.
set -euo pipefail

find_bin() {
    local dir
    if command -v pg_config >/dev/null 2>&1; then
        dir=$(pg_config --bindir 2>/dev/null || true)
        if [[ -x "$dir/initdb" ]]; then echo "$dir"; return; fi
    fi
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [[ -x "$dir/initdb" ]]; then echo "$dir"; return; fi
    done
    if command -v initdb >/dev/null 2>&1; then dirname "$(command -v initdb)"; return; fi
    return 1
}

as_owner() {
    if [[ $(id -u) -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

if [[ ${1:-} == stop ]]; then
    url=${2:?usage: pg-test-db.sh stop URL}
    port=${url##*:}; port=${port%%/*}
    dir=$(cat "/tmp/dialtone-pg-port-$port" 2>/dev/null || true)
    if [[ -z $dir || ! -d $dir ]]; then
        echo "pg-test-db: no cluster recorded for port $port" >&2
        exit 1
    fi
    bin=$(find_bin)
    as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >&2 || true
    rm -rf "$dir" "/tmp/dialtone-pg-port-$port"
    exit 0
fi

if ! bin=$(find_bin); then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "pg-test-db: installing postgresql" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql >&2
        bin=$(find_bin)
    else
        echo "pg-test-db: PostgreSQL is not installed (apt-get install -y postgresql)" >&2
        exit 1
    fi
fi
if [[ $(id -u) -eq 0 ]] && ! id postgres >/dev/null 2>&1; then
    echo "pg-test-db: running as root but there is no postgres user" >&2
    exit 1
fi

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

dir=$(mktemp -d /tmp/dialtone-pg.XXXXXX)
chmod 755 "$dir"
[[ $(id -u) -eq 0 ]] && chown postgres: "$dir"
as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C >"$dir/initdb.log" 2>&1 || {
    cat "$dir/initdb.log" >&2
    exit 1
}

# A port can be taken between choosing and binding it; try a few.
for _ in 1 2 3 4 5; do
    port=$(free_port)
    if as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" \
        start >&2; then
        echo "$dir" >"/tmp/dialtone-pg-port-$port"
        as_owner "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres dialtone_test
        echo "pg-test-db: cluster in $dir (stop: $0 stop postgres://postgres@127.0.0.1:$port/dialtone_test)" >&2
        echo "postgres://postgres@127.0.0.1:$port/dialtone_test"
        exit 0
    fi
    tail -n 5 "$dir/server.log" >&2 || true
done
echo "pg-test-db: could not start PostgreSQL" >&2
exit 1
