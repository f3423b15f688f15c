#!/usr/bin/env bash
# SIP signalling load benchmark (not a test; nothing here passes or fails on numbers).
#
# Builds the release binary, starts dialtone on loopback (UDP only), and drives it with
# SIPp at rising call rates:
#   options  OPTIONS -> 200
#   invite   INVITE -> 100 -> 404, ACK
# For each rate it prints the offered rate, the successful requests per second actually
# sustained, failures, p50/p99 response time (SIPp -trace_rtt, 1 ms resolution), and the
# server's CPU use and memory. Results, raw SIPp files and the server log go under
# benches/results/<UTC timestamp>/; summary.md there is ready for the README.
#
#   benches/sip_load.sh
#   RATES="100 200" DURATION=5 SCENARIOS=options benches/sip_load.sh     (quick look)
#
# Environment: RATES (calls/s, default "200 500 1000 2000 4000"), DURATION (s per rate,
# default 15), SCENARIOS (default "options invite"), SIP_PORT (25060), HTTP_PORT (28080),
# SIPP_PORT (25070), CARGO_TARGET_DIR.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
RATES="${RATES:-200 500 1000 2000 4000}"
DURATION="${DURATION:-15}"
SCENARIOS="${SCENARIOS:-options invite}"
SIP_PORT="${SIP_PORT:-25060}"
HTTP_PORT="${HTTP_PORT:-28080}"
SIPP_PORT="${SIPP_PORT:-25070}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dialtone-target}"

command -v sipp >/dev/null || { echo "sipp not found: apt-get install -y sip-tester" >&2; exit 1; }

out="benches/results/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"
repo="$(pwd)"

echo "== building release binary"
cargo build --release --locked --bin dialtone
bin="$CARGO_TARGET_DIR/release/dialtone"

echo "== starting dialtone (UDP 127.0.0.1:$SIP_PORT, HTTP 127.0.0.1:$HTTP_PORT)"
env DIALTONE__SIP__UDP="127.0.0.1:$SIP_PORT" \
    DIALTONE__SIP__TCP="" \
    DIALTONE__SIP__TLS="" \
    DIALTONE__HTTP__LISTEN="127.0.0.1:$HTTP_PORT" \
    DIALTONE__LOG__FILTER="warn" \
    DIALTONE__DATABASE__URL="sqlite://$repo/$out/bench.db" \
    "$bin" --config config/default.toml 2>"$out/dialtone.log" &
server=$!
cleanup() {
    if kill -0 "$server" 2>/dev/null; then
        kill -TERM "$server" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$server" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$server" 2>/dev/null || true
    fi
}
trap cleanup EXIT

healthz() {
    # A tiny HTTP GET over bash's /dev/tcp, so no curl is needed.
    local line
    exec 3<>"/dev/tcp/127.0.0.1/$HTTP_PORT" || return 1
    printf 'GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n' >&3
    read -r -t 2 line <&3 || true
    exec 3<&-
    [[ "$line" == *" 200"* ]]
}
for i in $(seq 100); do
    healthz 2>/dev/null && break
    kill -0 "$server" 2>/dev/null || { echo "dialtone exited:"; cat "$out/dialtone.log"; exit 1; }
    [ "$i" = 100 ] && { echo "dialtone not healthy after 20 s" >&2; exit 1; }
    sleep 0.2
done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$server/stat"; }
rss_mb() { awk '/^VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$server/status"; }
hz=$(getconf CLK_TCK)

{
    echo "machine: $(nproc) CPU(s), $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)"
    echo "memory:  $(free -m | awk '/^Mem:/ {print $2 " MB"}')"
    echo "kernel:  $(uname -sr)"
    echo "sipp:    $(sipp -v 2>&1 | grep -o 'SIPp v[^ ]*' | head -1)"
    echo "commit:  $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "date:    $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "load generator and server share this machine (loopback); ${DURATION} s per rate"
} | tee "$out/machine.txt"

summary="$out/summary.md"
{
    echo "| scenario | offered calls/s | successful | failed | sustained req/s | p50 ms | p99 ms | server CPU % | server RSS MB |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
} >"$summary"

# Column of a SIPp statistics CSV by header name, from the last line.
stat_col() {
    awk -F';' -v name="$2" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == name) c = i }
                            END { print (c ? $c : "?") }' "$1"
}

# Nearest-rank percentile of the response times (ms) in a SIPp rtt CSV.
percentile() {
    awk -F';' 'NR > 1 && $2 != "" { print $2 }' "$1" | sort -n |
        awk -v q="$2" '{ v[NR] = $1 } END { if (NR == 0) { print "-"; exit }
                        r = int(q * NR); if (r < q * NR) r++; if (r < 1) r = 1; print v[r] }'
}

for scenario in $SCENARIOS; do
    case "$scenario" in
        options) xml="$repo/tests/sipp/options.xml" ;;
        invite) xml="$repo/benches/sipp/invite_404_load.xml" ;;
        *) echo "unknown scenario $scenario" >&2; exit 1 ;;
    esac
    for rate in $RATES; do
        calls=$((rate * DURATION))
        dir="$out/$scenario-$rate"
        mkdir -p "$dir"
        echo "== $scenario at $rate calls/s ($calls calls)"
        t0=$(date +%s.%N)
        c0=$(cpu_ticks)
        set +e
        (cd "$dir" && timeout --kill-after=5 $((DURATION * 3 + 30)) \
            sipp -sf "$xml" -t u1 -i 127.0.0.1 -p "$SIPP_PORT" -s bench \
                -r "$rate" -rp 1000 -m "$calls" -l $((rate * 10)) \
                -timeout $((DURATION * 2 + 20))s -nostdin -max_recv_loops 10000 \
                -trace_stat -stf stat.csv -fd 1 \
                -trace_rtt -rtt_freq 1000 \
                -trace_err -error_file errors.log \
                "127.0.0.1:$SIP_PORT" >sipp.out 2>&1)
        rc=$?
        set -e
        t1=$(date +%s.%N)
        c1=$(cpu_ticks)
        ok=$(stat_col "$dir/stat.csv" "SuccessfulCall(C)")
        failed=$(stat_col "$dir/stat.csv" "FailedCall(C)")
        rtt=$(ls "$dir"/*_rtt.csv 2>/dev/null | head -1)
        p50=$([ -n "$rtt" ] && percentile "$rtt" 0.50 || echo "-")
        p99=$([ -n "$rtt" ] && percentile "$rtt" 0.99 || echo "-")
        sustained=$(awk -v n="$ok" -v a="$t0" -v b="$t1" 'BEGIN { if (n ~ /^[0-9]+$/) printf "%.0f", n / (b - a); else print "-" }')
        cpu=$(awk -v a="$c0" -v b="$c1" -v s="$t0" -v e="$t1" -v hz="$hz" 'BEGIN { printf "%.0f", 100 * (b - a) / hz / (e - s) }')
        rss=$(rss_mb)
        echo "   sipp exit $rc: successful $ok, failed $failed, sustained $sustained req/s, p50 ${p50} ms, p99 ${p99} ms, CPU ${cpu}%, RSS ${rss} MB"
        echo "| $scenario | $rate | $ok | $failed | $sustained | $p50 | $p99 | $cpu | $rss |" >>"$summary"
        if ! kill -0 "$server" 2>/dev/null; then
            echo "dialtone died during the run; see $out/dialtone.log" >&2
            exit 1
        fi
        sleep 2 # let the server's transactions drain a little between steps
    done
done

echo
echo "== results ($out)"
cat "$out/machine.txt"
echo
cat "$summary"
