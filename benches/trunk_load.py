#!/usr/bin/env python3
"""Trunk set-up benchmark (not a test; nothing here passes or fails on numbers).

Starts the release dialtone on loopback and measures, at rising call rates:
  outbound  POST /v2/create-phone-call -> INVITE -> 401 -> INVITE with digest -> 200 -> ACK,
            through a SIPp trunk that verifies the digest (benches/sipp/trunk_uas_load.xml);
            set-up time = the call's start_timestamp - created_timestamp (API to answered).
  inbound   SIPp as the carrier sends INVITEs to an imported number
            (benches/sipp/carrier_uac_load.xml); set-up time = SIPp's INVITE -> 200.
Calls are bridged to the built-in echo agent and end after about a second (the carrier's
BYE, or no RTP on the outbound side). Prints one markdown table.

    benches/trunk_load.py                 RATES="5 10 20" DURATION=10 by default
"""
import json, os, shutil, signal, socket, statistics, subprocess, sys, tempfile, threading, time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATES = [int(r) for r in os.environ.get("RATES", "5 10 20").split()]
DURATION = int(os.environ.get("DURATION", "10"))
KEY = "bench-key-0123456789"


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def pct(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


class Api:
    def __init__(self, base):
        self.base = base

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Authorization", "Bearer " + KEY)
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                raw = r.read()
                return r.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            return e.code, None


def main():
    target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/dialtone-target"))
    subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "dialtone"], cwd=ROOT, check=True)
    binary = os.path.join(target, "release", "dialtone")
    work = tempfile.mkdtemp(prefix="trunk-bench-")
    sip, http, trunk = free_port(), free_port(), free_port()
    env = dict(os.environ,
               DIALTONE__SIP__UDP=f"127.0.0.1:{sip}", DIALTONE__SIP__TCP="",
               DIALTONE__HTTP__LISTEN=f"127.0.0.1:{http}", DIALTONE__API__KEYS=KEY,
               DIALTONE__DATABASE__URL=f"sqlite://{work}/db.sqlite",
               DIALTONE__MEDIA__RTP_PORTS="30000-39999",
               DIALTONE__CALLS__NO_AUDIO_TIMEOUT_MS="1000", DIALTONE__LOG__FILTER="warn",
               NO_COLOR="1")
    log = open(os.path.join(work, "dialtone.log"), "w")
    server = subprocess.Popen([binary, "--config", os.path.join(ROOT, "config/default.toml")],
                              env=env, stderr=log)
    api = Api(f"http://127.0.0.1:{http}")
    rows = []
    try:
        for _ in range(100):
            try:
                if urllib.request.urlopen(api.base + "/healthz", timeout=1).status == 200:
                    break
            except Exception:
                time.sleep(0.1)
        status, _ = api.call("POST", "/import-phone-number", {
            "phone_number": "+14155550100", "termination_uri": f"127.0.0.1:{trunk}",
            "transport": "UDP", "sip_trunk_auth_username": "trunkuser",
            "sip_trunk_auth_password": "trunkpass", "outbound_agent_id": "echo"})
        assert status == 201, status
        status, _ = api.call("POST", "/import-phone-number", {
            "phone_number": "+14155550200", "termination_uri": "unused.example.com",
            "inbound_agent_id": "echo"})
        assert status == 201, status

        # Outbound.
        total = sum(r * DURATION for r in RATES)
        uas = subprocess.Popen(["sipp", "-sf", os.path.join(ROOT, "benches/sipp/trunk_uas_load.xml"),
                                "-i", "127.0.0.1", "-p", str(trunk), "-m", str(total), "-nostdin",
                                "-timeout", str(len(RATES) * (DURATION + 30))],
                               cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        for rate in RATES:
            ids, lock = [], threading.Lock()

            def one():
                s, call = api.call("POST", "/v2/create-phone-call",
                                   {"from_number": "+14155550100", "to_number": "+14155550123"})
                if s == 201:
                    with lock:
                        ids.append(call["call_id"])

            threads, start = [], time.time()
            for i in range(rate * DURATION):
                delay = start + i / rate - time.time()
                if delay > 0:
                    time.sleep(delay)
                t = threading.Thread(target=one)
                t.start()
                threads.append(t)
            for t in threads:
                t.join()
            time.sleep(5)
            setups, failed = [], 0
            for cid in ids:
                _, call = api.call("GET", f"/v2/get-call/{cid}")
                if call and call.get("start_timestamp"):
                    setups.append(call["start_timestamp"] - call["created_timestamp"])
                else:
                    failed += 1
            failed += rate * DURATION - len(ids)
            rows.append(("outbound (401 + digest)", rate, len(setups), failed,
                         pct(setups, 50), pct(setups, 99)))
        uas.send_signal(signal.SIGINT)

        # Inbound.
        for rate in RATES:
            run = os.path.join(work, f"in-{rate}")
            os.makedirs(run)
            subprocess.run(["sipp", f"127.0.0.1:{sip}", "-sf",
                            os.path.join(ROOT, "benches/sipp/carrier_uac_load.xml"),
                            "-s", "+14155550200", "-i", "127.0.0.1", "-p", str(free_port()),
                            "-r", str(rate), "-m", str(rate * DURATION), "-nostdin",
                            "-timeout", str(DURATION + 30), "-trace_rtt", "-rtt_freq", "1"],
                           cwd=run, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times = []
            for name in os.listdir(run):
                if name.endswith("_rtt.csv"):
                    for line in open(os.path.join(run, name)).read().splitlines()[1:]:
                        parts = line.split(";")
                        if len(parts) >= 3:
                            try:
                                times.append(float(parts[2]))
                            except ValueError:
                                pass
            rows.append(("inbound to a number", rate, len(times), rate * DURATION - len(times),
                         pct(times, 50), pct(times, 99)))
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(work, ignore_errors=True)

    print(f"machine: {os.cpu_count()} CPU(s); {DURATION} s per rate; SIPp and dialtone on loopback")
    print("| path | calls/s offered | set up | failed | set-up p50 ms | set-up p99 ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for path, rate, ok, failed, p50, p99 in rows:
        print(f"| {path} | {rate} | {ok} | {failed} | {p50:.1f} | {p99:.1f} |")


if __name__ == "__main__":
    sys.exit(main())
