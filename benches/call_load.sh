#!/usr/bin/env bash
# Load benchmark (not a test, nothing is asserted): N concurrent SIPp calls, RTP both ways
# through an echo agent (mulaw_8000), for about 30 s each, at N = 50, 100, 200, 400 (or the
# N given as arguments). The agent is examples/echo_agent.rs in its own process (so
# dialtone's CPU and memory are the gateway's alone); AGENT=builtin uses dialtone's own
# ws://<http>/agents/echo instead, which refuses more than 64 sessions at once (503).
# Prints a markdown table per N:
#   CPU (% of one core, per call)   from /proc/<pid>/stat utime+stime over the steady window
#   RSS per call                    (VmRSS during the steady window - VmRSS idle) / N
#   packets lost                    RTP SIPp sent to dialtone minus what dialtone counted in
#                                   (when /metrics has such a counter), and SIPp's own
#                                   failed calls
#   RTP -> websocket p50/p99        from the histogram dialtone_media_rtp_to_agent_seconds
#   INVITE -> 200 p50/p99           from SIPp's message trace (microsecond timestamps)
#
#   benches/call_load.sh            # all four N, about 50 s each
#   benches/call_load.sh 50         # one N
#
# Runs as root (SIPp's pcap_play uses a raw socket; tcpdump counts packets). Loopback only.
# Every step is bounded; the whole run stops by itself. Environment:
#   CARGO_TARGET_DIR   build directory (default: $HOME/.cache/dialtone-target)
#   HOLD_S             seconds each call plays audio (default 30)
#   RATE               calls set up per second (default 50)
#   AGENT              external (default) or builtin
#   KEEP=1             keep the work directory
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dialtone-target}"
HOLD_S="${HOLD_S:-30}"
RATE="${RATE:-50}"
AGENT_KIND="${AGENT:-external}"
NS=("$@")
[ "${#NS[@]}" -gt 0 ] || NS=(50 100 200 400)
KEY="bench-key-0123456789"

for tool in sipp tcpdump curl jq python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool (tests/e2e/apt-packages.txt)" >&2; exit 1; }
done
[ "$(id -u)" -eq 0 ] || { echo "run as root (SIPp pcap_play, tcpdump)" >&2; exit 1; }
ulimit -n 65536 2>/dev/null || ulimit -n 4096 2>/dev/null || true

WORK=$(mktemp -d /tmp/dialtone-bench.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]:-}"; do
        [ -n "$p" ] && kill "$p" 2>/dev/null || true
    done
    if [ "${KEEP:-0}" = 1 ]; then echo "work directory kept: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

echo "building release binary..." >&2
cargo build --release --quiet --bin dialtone --example echo_agent
BIN="$CARGO_TARGET_DIR/release/dialtone"
ECHO_BIN="$CARGO_TARGET_DIR/release/examples/echo_agent"

# A pcap a little longer than the hold time, so audio flows for the whole call.
python3 scripts/make-test-audio.py --only pcmu --seconds "$((HOLD_S + 2))" --out "$WORK" >/dev/null
PCAP_PKTS=$(( (HOLD_S + 2) * 50 ))
sed -e "s#PCAP_PATH#$WORK/pcmu.pcap#" -e "s#HOLD_MS#$((HOLD_S * 1000 + 500))#" \
    tests/e2e/sipp/uac_load_pcmu.xml >"$WORK/uac_load.xml"

free_port() { # a free loopback TCP+UDP port
    python3 - <<'EOF'
import socket
for _ in range(100):
    t = socket.socket(); t.bind(("127.0.0.1", 0)); p = t.getsockname()[1]
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.bind(("127.0.0.1", p)); print(p); break
    except OSError:
        pass
    finally:
        u.close(); t.close()
EOF
}

proc_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
machine_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9, $5 + $6}' /proc/stat; } # total idle
proc_rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
CLK_TCK=$(getconf CLK_TCK)

# Percentiles from the metrics text: a Prometheus histogram (buckets) or summary (quantiles).
metric_percentiles() { # file metric -> "p50_ms p99_ms count mean_ms"
    python3 - "$1" "$2" <<'EOF'
import re, sys
text = open(sys.argv[1]).read().splitlines()
name = sys.argv[2]
buckets, quant, count, total = {}, {}, 0.0, 0.0
for line in text:
    if line.startswith("#"):
        continue
    m = re.match(r'^(\S+?)(\{[^}]*\})?\s+(\S+)$', line)
    if not m:
        continue
    metric, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
    if metric == name + "_bucket":
        le = re.search(r'le="([^"]+)"', labels).group(1)
        le = float("inf") if le == "+Inf" else float(le)
        buckets[le] = buckets.get(le, 0.0) + value
    elif metric == name and "quantile" in labels:
        q = float(re.search(r'quantile="([^"]+)"', labels).group(1))
        quant[q] = max(quant.get(q, 0.0), value)
    elif metric == name + "_count":
        count += value
    elif metric == name + "_sum":
        total += value
def from_buckets(p):
    edges = sorted(buckets)
    total = buckets[edges[-1]]
    if total == 0:
        return float("nan")
    target, prev_le, prev_c = p * total, 0.0, 0.0
    for le in edges:
        c = buckets[le]
        if c >= target:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * ((target - prev_c) / max(c - prev_c, 1e-12))
        prev_le, prev_c = le, c
    return edges[-1]
if buckets:
    p50, p99 = from_buckets(0.5), from_buckets(0.99)
elif quant:
    p50, p99 = quant.get(0.5, float("nan")), quant.get(0.99, float("nan"))
else:
    print("n/a n/a 0 n/a"); sys.exit()
mean = f"{total / count * 1000:.2f}" if count else "n/a"
print(f"{p50*1000:.2f} {p99*1000:.2f} {int(count)} {mean}")
EOF
}

sum_metric() { # file regex -> sum of matching series (or empty)
    awk -v re="$2" '$1 ~ re && $1 !~ /^#/ {s += $NF; n++} END {if (n) printf "%d", s}' "$1"
}

invite_to_200() { # sipp -trace_msg log -> "p50 p99 count" in ms
    python3 - "$1" <<'EOF'
import re, sys
from datetime import datetime
sent, answered = {}, {}
entry_re = re.compile(r"^-{20,} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)$")
def flush(ts, lines):
    if ts is None or len(lines) < 3:
        return
    direction = "sent" if "message sent" in lines[0] else "recv"
    body = [l for l in lines[1:] if l.strip()]
    if not body:
        return
    first = body[0].strip()
    cid = next((l.split(":", 1)[1].strip() for l in body if l.lower().startswith("call-id:")), None)
    cseq = next((l.split(":", 1)[1] for l in body if l.lower().startswith("cseq:")), "")
    if cid is None:
        return
    if direction == "sent" and first.startswith("INVITE "):
        sent.setdefault(cid, ts)
    elif direction == "recv" and first.startswith("SIP/2.0 200") and "INVITE" in cseq:
        answered.setdefault(cid, ts)
ts, lines = None, []
for raw in open(sys.argv[1], errors="replace"):
    line = raw.rstrip("\r\n")
    m = entry_re.match(line)
    if m:
        flush(ts, lines)
        ts, lines = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f"), []
    else:
        lines.append(line)
flush(ts, lines)
vals = sorted((answered[c] - sent[c]).total_seconds() * 1000 for c in answered if c in sent)
if not vals:
    print("n/a n/a 0"); sys.exit()
pick = lambda p: vals[min(len(vals) - 1, int(p * len(vals)))]
print(f"{pick(0.5):.2f} {pick(0.99):.2f} {len(vals)}")
EOF
}

ROWS=()
for N in "${NS[@]}"; do
    echo "== N=$N ==" >&2
    DIR="$WORK/n$N"
    mkdir -p "$DIR"
    SIP_PORT=$(free_port)
    HTTP_PORT=$(free_port)
    MEDIA_PORT=$(( 16000 + (RANDOM % 1000) * 2 ))
    DIALTONE__SIP__UDP="127.0.0.1:$SIP_PORT" DIALTONE__SIP__TCP="" \
    DIALTONE__SIP__PUBLIC_HOST=127.0.0.1 DIALTONE__HTTP__LISTEN="127.0.0.1:$HTTP_PORT" \
    DIALTONE__API__KEYS="$KEY" DIALTONE__DATABASE__URL="sqlite://$DIR/db.sqlite" \
    DIALTONE__MEDIA__RTP_PORTS=20000-29999 DIALTONE__MEDIA__PUBLIC_IP=127.0.0.1 \
    DIALTONE__LOG__FILTER=warn DIALTONE__SHUTDOWN__GRACE_PERIOD_MS=1000 \
        "$BIN" --config config/default.toml >"$DIR/dialtone.log" 2>&1 &
    DT=$!
    PIDS+=("$DT")
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$HTTP_PORT/healthz" >/dev/null 2>&1 && break
        sleep 0.1
    done
    curl -sf "http://127.0.0.1:$HTTP_PORT/healthz" >/dev/null || { cat "$DIR/dialtone.log" >&2; exit 1; }
    api() { curl -sS --max-time 10 -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' "$@"; }
    if [ "$AGENT_KIND" = builtin ]; then
        AGENT_URL="ws://127.0.0.1:$HTTP_PORT/agents/echo"
    else
        ECHO_PORT=$(free_port)
        "$ECHO_BIN" "127.0.0.1:$ECHO_PORT" 2>"$DIR/echo_agent.log" &
        ECHO=$!
        PIDS+=("$ECHO")
        sleep 0.3
        AGENT_URL="ws://127.0.0.1:$ECHO_PORT/ws"
    fi
    AGENT=$(api -X POST "http://127.0.0.1:$HTTP_PORT/create-agent" -d "{\"agent_name\":\"bench\",\"response_engine\":{\"type\":\"audio-websocket\",\"url\":\"$AGENT_URL\",\"audio_encoding\":\"mulaw_8000\"}}" | jq -r .agent_id)
    echo "SEQUENTIAL" >"$DIR/calls.csv"
    for _ in $(seq "$N"); do
        api -X POST "http://127.0.0.1:$HTTP_PORT/v2/register-phone-call" -d "{\"agent_id\":\"$AGENT\"}" | jq -r '.call_id + ";"' >>"$DIR/calls.csv"
    done
    RSS_IDLE=$(proc_rss_kb "$DT")

    # Count RTP both ways on loopback (tcpdump prints its counts when stopped).
    tcpdump -i lo -n -s 64 -w /dev/null "udp and src port $MEDIA_PORT" 2>"$DIR/td_sent.txt" &
    TD1=$!
    tcpdump -i lo -n -s 64 -w /dev/null "udp and dst port $MEDIA_PORT" 2>"$DIR/td_back.txt" &
    TD2=$!
    PIDS+=("$TD1" "$TD2")
    sleep 1

    RAMP_S=$(( (N + RATE - 1) / RATE ))
    (cd "$DIR" && timeout $((HOLD_S + RAMP_S + 40)) sipp "127.0.0.1:$SIP_PORT" -sf "$WORK/uac_load.xml" \
        -inf "$DIR/calls.csv" -m "$N" -l "$N" -r "$RATE" -rp 1000 \
        -i 127.0.0.1 -mi 127.0.0.1 -mp "$MEDIA_PORT" -nostdin \
        -trace_msg -message_file "$DIR/messages.log" \
        -trace_screen -screen_file "$DIR/screen.log" \
        -trace_err -error_file "$DIR/errors.log" -timeout $((HOLD_S + RAMP_S + 30))s \
        >"$DIR/sipp.out" 2>&1) &
    SIPP=$!
    PIDS+=("$SIPP")

    # Steady window: from 2 s after the last call is set up, for (HOLD_S - 8) s.
    sleep $((RAMP_S + 2))
    T1=$(proc_ticks "$DT"); W1=$(date +%s.%N)
    read -r M1_TOTAL M1_IDLE < <(machine_ticks)
    sleep $((HOLD_S - 8))
    T2=$(proc_ticks "$DT"); W2=$(date +%s.%N)
    read -r M2_TOTAL M2_IDLE < <(machine_ticks)
    RSS_BUSY=$(proc_rss_kb "$DT")
    curl -sf "http://127.0.0.1:$HTTP_PORT/metrics" >"$DIR/metrics_busy.txt" || true

    SIPP_RC=0
    wait "$SIPP" || SIPP_RC=$?
    sleep 1
    curl -sf "http://127.0.0.1:$HTTP_PORT/metrics" >"$DIR/metrics.txt" || true
    kill -INT "$TD1" "$TD2" 2>/dev/null || true
    wait "$TD1" "$TD2" 2>/dev/null || true
    kill "$DT" 2>/dev/null || true
    wait "$DT" 2>/dev/null || true
    if [ -n "${ECHO:-}" ]; then kill "$ECHO" 2>/dev/null || true; wait "$ECHO" 2>/dev/null || true; ECHO=; fi

    CPU_PCT=$(python3 -c "print(f'{($T2-$T1)/$CLK_TCK/($W2-$W1)*100:.1f}')")
    CPU_PER_CALL=$(python3 -c "print(f'{($T2-$T1)/$CLK_TCK/($W2-$W1)*100/$N:.3f}')")
    MACHINE_BUSY=$(python3 -c "t=$M2_TOTAL-$M1_TOTAL; print(f'{(t-($M2_IDLE-$M1_IDLE))/t*100:.0f}' if t else 'n/a')")
    RSS_PER_CALL=$(python3 -c "print(f'{($RSS_BUSY-$RSS_IDLE)/$N:.0f}')")
    SENT=$(awk '/packets captured/ {print $1}' "$DIR/td_sent.txt")
    BACK=$(awk '/packets captured/ {print $1}' "$DIR/td_back.txt")
    KDROP=$(awk '/dropped by kernel/ {s += $1} END {print s + 0}' "$DIR/td_sent.txt" "$DIR/td_back.txt")
    RECEIVED=$(sum_metric "$DIR/metrics.txt" '^dialtone_media_packets_total[{]direction="in"[}]')
    if [ -n "$RECEIVED" ] && [ -n "$SENT" ]; then
        LOST="$((SENT - RECEIVED)) of $SENT"
    else
        LOST="n/a (sent $SENT)"
    fi
    JB_LOST=$(sum_metric "$DIR/metrics.txt" '^dialtone_(media_dropped|agent_frames_dropped)_total')
    SLIPS_IN=$(sum_metric "$DIR/metrics.txt" '^dialtone_media_clock_slips_total[{]path="in"[}]')
    SLIPS_OUT=$(sum_metric "$DIR/metrics.txt" '^dialtone_media_clock_slips_total[{]path="out"[}]')
    read -r R50 R99 RCOUNT RMEAN < <(metric_percentiles "$DIR/metrics_busy.txt" dialtone_media_rtp_to_agent_seconds)
    read -r I50 I99 ICOUNT < <(invite_to_200 "$DIR/messages.log")
    OKC=$(awk -F'|' '/Successful call/ {gsub(/ /, "", $3); print $3}' "$DIR/screen.log" | tail -1)
    FAILC=$(awk -F'|' '/Failed call/ {gsub(/ /, "", $3); print $3}' "$DIR/screen.log" | tail -1)
    ROWS+=("| $N | ${OKC:-?} / ${FAILC:-?} (sipp exit $SIPP_RC) | $MACHINE_BUSY | $CPU_PCT | $CPU_PER_CALL | $((RSS_IDLE / 1024)) → $((RSS_BUSY / 1024)) | $RSS_PER_CALL | $LOST | ${JB_LOST:-n/a} | ${SLIPS_IN:-0} / ${SLIPS_OUT:-0} | ${BACK:-?} | $KDROP | $R50 / $R99 (mean $RMEAN) | $I50 / $I99 |")
    echo "  sent by SIPp: $SENT (expected ~$((N * PCAP_PKTS))), back to SIPp: $BACK, dialtone counted in: ${RECEIVED:-n/a}" >&2
done

echo
echo "dialtone load: $(nproc) cores (shared with SIPp and the agent), ${HOLD_S} s per call, PCMU both ways through the $AGENT_KIND echo agent (mulaw_8000), set-up rate ${RATE}/s"
echo
echo "| N | calls ok / failed | machine CPU busy % (all cores) | dialtone CPU % of a core | CPU %/call | RSS MiB idle → busy | RSS KiB/call | RTP lost (sent − counted in) | dialtone media/agent dropped counters | clock slips in / out | RTP back to SIPp | tcpdump kernel drops | RTP→ws p50 / p99 ms | INVITE→200 p50/p99 ms |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for r in "${ROWS[@]}"; do echo "$r"; done
