#!/usr/bin/env bash
# The floor under compare.sh's figures: its own load generator against bare servers.
#
#   tools/floor.sh [ROUNDS] [SECONDS]        (from the project's root, after the quick start)
#
# Starts three bare server processes (`python -m boutique.bench.echo`: every line answered
# at once as an in-memory map; no Raft, no storage, no routing), first with a trio task
# per connection (what boutique's server does per request), then with one `selectors`
# loop over every socket (the least Python can do), and drives each with
# ../shared/bench/line_load.py exactly as ../shared/bench/compare.sh drives the store:
# PUT and GET at 64 connections, PUT at 1 connection, pipelined PUT 8 x 32, two generator
# processes. Run it in the same sitting as compare.sh: what a server that does nothing
# reaches bounds what the store can reach on this machine. GETs go as `--op mix
# --get-ratio 1` (all GETs, and a key another bare server took the PUT of may answer the
# empty line). Everything on 127.0.0.1; every process stopped by PID.
set -u
ROUNDS=${1:-2}; T=${2:-10}
cd "$(dirname "$0")/.."
PY=${BOUTIQUE_PYTHON:-.venv/bin/python}
LOAD=${LINE_LOAD:-../shared/bench/line_load.py}
[ -f "$LOAD" ] || { echo "no load generator at $LOAD (set LINE_LOAD)"; exit 2; }
OUT=$(mktemp -d -t floor.XXXXXX)
PIDS=()
stop() { [ ${#PIDS[@]} -gt 0 ] && kill "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null; PIDS=(); }
trap stop EXIT
ports() { "$PY" -c 'from boutique.testing.local_cluster import free_ports; print(*free_ports(3))'; }
for r in $(seq "$ROUNDS"); do
  for loop in trio selectors; do
    read -r -a P < <(ports)
    for p in "${P[@]}"; do "$PY" -m boutique.bench.echo --port "$p" --loop "$loop" & PIDS+=($!); done
    for p in "${P[@]}"; do
      for _ in $(seq 100); do "$PY" -c "import socket; socket.create_connection(('127.0.0.1', $p), 1)" 2>/dev/null && break; sleep 0.1; done
    done
    EPS=$(printf "127.0.0.1:%s," "${P[@]}"); EPS=${EPS%,}
    SPIDS=$(IFS=,; echo "${PIDS[*]}")
    for case in "put 64 1" "get 64 1" "put 1 1" "put 8 32"; do
      set -- $case
      op=(--op "$1"); [ "$1" = get ] && op=(--op mix --get-ratio 1)
      result=$(python3 "$LOAD" --endpoints "$EPS" "${op[@]}" -c "$2" --depth "$3" -t "$T" --procs 2 --pids "$SPIDS" 2>"$OUT/load.err" | tail -1)
      if [ -z "$result" ]; then echo "the load generator failed ($loop, $1$2x$3):"; cat "$OUT/load.err"; exit 1; fi
      echo "{\"round\":$r,\"loop\":\"$loop\",\"case\":\"$1$2x$3\",\"r\":$result}" >> "$OUT/results.jsonl"
    done
    stop
  done
done
python3 - "$OUT/results.jsonl" <<'PY'
import json, statistics as st, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
by = {}
for x in rows:
    r = x["r"]
    ops = r["ops_per_s"]
    server = sum(r.get("server_cpu_pct", {}).values())
    by.setdefault((x["case"], x["loop"]), []).append((ops, r["p50_ms"], r["p99_ms"], server, r["gen_cpu_pct"], r["errors"]))
def med(v, i): return st.median(t[i] for t in v)
print(f"{'case':9} {'loop':10} {'ops/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'server us/op':>13} {'generator us/op':>16} {'errors':>7}")
for (case, loop), v in sorted(by.items()):
    ops = med(v, 0)
    print(f"{case:9} {loop:10} {ops:8.0f} {med(v,1):7.3f} {med(v,2):7.2f} {1e4*med(v,3)/ops:13.1f} {1e4*med(v,4)/ops:16.1f} {sum(t[5] for t in v):7d}")
print("raw:", sys.argv[1])
PY
