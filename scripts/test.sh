#!/usr/bin/env bash
# dialtone's one test command: installs what the tests need (Debian 12, as root), checks
# formatting and lints, runs the whole test suite, and builds the release binary.
#
#   scripts/test.sh
#
# Environment:
#   CARGO_TARGET_DIR   build directory (default: $HOME/.cache/dialtone-target, so fresh
#                      clones in CI still build incrementally)
#   SKIP_APT=1         never run apt-get (fails later if a tool is missing)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dialtone-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export DEBIAN_FRONTEND=noninteractive

started=$(date +%s)
section() {
    printf '\n==== %s  [%ss] ====\n' "$*" "$(($(date +%s) - started))"
}

# ---------------------------------------------------------------------------------------
section "System packages"
# binary -> Debian package that provides it
declare -A provides=(
    [sipp]=sip-tester
    [openssl]=openssl
    [pkg-config]=pkg-config
    [cc]=build-essential
    [baresip]=baresip
    [tcpdump]=tcpdump
    [python3]=python3
    [dnsmasq]=dnsmasq-base
)
missing=()
for bin in "${!provides[@]}"; do
    command -v "$bin" >/dev/null 2>&1 || missing+=("${provides[$bin]}")
done
[ -f /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)
# pip for the Python test dependencies (Debian's python3 comes without it).
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
# The PostgreSQL server (not just the client) for the store's Postgres tests.
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
if [ "${#missing[@]}" -eq 0 ]; then
    echo "all needed tools present; skipping apt-get"
elif [ "${SKIP_APT:-0}" = 1 ]; then
    echo "missing: ${missing[*]} (SKIP_APT=1, not installing)" >&2
elif [ "$(id -u)" -ne 0 ]; then
    echo "missing: ${missing[*]}; run as root (or install them) and retry" >&2
    exit 1
else
    echo "installing: ${missing[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" ca-certificates
fi
echo "sipp: $(sipp -v 2>&1 | grep -o 'SIPp v[^ ]*' | head -1)"

# ---------------------------------------------------------------------------------------
section "Python packages"
# The official retell-sdk drives the API test, pylibsrtp (libsrtp) the SRTP interop test,
# and a real Pipecat bot the call_pipecat test; versions are pinned in the requirements
# files. (tests/e2e/requirements.txt is only for regenerating pcaps and the load benchmark.)
for req in tests/sdk/requirements.txt tests/pipecat/requirements.txt; do
    [ -f "$req" ] || continue
    if python3 - "$req" <<'PY'
import sys, importlib.metadata as md
ok = True
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if not line:
        continue
    name, _, version = line.partition("==")
    name = name.split("[")[0]  # pipecat-ai[websocket]: the extras are pinned on their own lines
    try:
        if version and md.version(name) != version:
            ok = False
    except md.PackageNotFoundError:
        ok = False
sys.exit(0 if ok else 1)
PY
    then
        echo "$req: satisfied"
    else
        # Debian's own python3 is "externally managed" (PEP 668); a pyenv or venv one is not.
        python3 -m pip install --quiet --disable-pip-version-check -r "$req" ||
            python3 -m pip install --quiet --disable-pip-version-check --break-system-packages -r "$req"
    fi
done
echo "openssl: $(openssl version)"

# ---------------------------------------------------------------------------------------
section "Toolchain"
if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found; install Rust (https://rustup.rs) first" >&2
    exit 1
fi
if command -v rustup >/dev/null 2>&1; then
    rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
    rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi
cargo --version
rustc --version
echo "CARGO_TARGET_DIR=$CARGO_TARGET_DIR"

# ---------------------------------------------------------------------------------------
section "Self-contained"
# A fresh clone has nothing beside it: the code and its tests may only read what is in the
# repository (test data lives in tests/data).
if grep -rnF '../shared' src tests benches; then
    echo "the files above refer to ../shared, which a clone does not have; copy what they need into tests/data" >&2
    exit 1
fi
echo "nothing under src/, tests/ or benches/ refers outside the repository"

# ---------------------------------------------------------------------------------------
section "cargo fmt --check"
cargo fmt --all -- --check

# ---------------------------------------------------------------------------------------
section "cargo clippy"
cargo clippy --all-targets --locked -- -D warnings

# ---------------------------------------------------------------------------------------
# From here on a failing step does not stop the others: every result is reported, and the
# script fails at the end if any step failed.
failed=()

section "PostgreSQL for the store tests"
# The store runs the same code on SQLite and Postgres; the Postgres half needs a server.
pg_url=$(scripts/pg-test-db.sh)
export DIALTONE_TEST_POSTGRES_URL="$pg_url" DIALTONE_REQUIRE_POSTGRES=1
trap 'scripts/pg-test-db.sh stop "$pg_url" || true' EXIT
echo "postgres: $pg_url"

section "Tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --locked --no-fail-fast || failed+=("tests")
    # nextest does not run doctests.
    cargo test --locked --doc || failed+=("doctests")
else
    cargo test --locked --no-fail-fast || failed+=("tests")
fi

# ---------------------------------------------------------------------------------------
section "Release build"
scripts/build-release.sh || failed+=("release build")

if [ "${#failed[@]}" -gt 0 ]; then
    section "FAILED: ${failed[*]}"
    exit 1
fi
section "All checks passed"
