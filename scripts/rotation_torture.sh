#!/usr/bin/env bash
# Rotation torture (not run in CI): the agent follows one FHIR access log while a writer
# appends numbered lines and the log is rotated ROTATIONS times (default 1000), mixing:
#   rename     mv access.log → access.log.1 (older ones shift); the writer reopens at once
#   lazy       like rename, but the writer keeps writing into the renamed file ~50 ms first
#   delete     rename, then the rotated file is deleted soon after (read via the open handle)
#   truncate   copytruncate; the writer pauses and the agent catches up first, because the
#              bytes between copy and truncate are lost by copytruncate itself
# Each live file exists for at least 50 ms (the agent polls every 20 ms).
# At the end every line must have exactly one event (by request id, rid="req%08d"); lines
# read twice must give the same event id. Exit status 0 = nothing lost, nothing doubled.
#
# Usage: scripts/rotation_torture.sh [ROTATIONS] [BINARY]   (1000 rotations: ~5 min + catch-up)
#   BINARY defaults to target/release/balp-agent, else target/debug/balp-agent.
set -euo pipefail

ROTATIONS="${1:-1000}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="${2:-}"
if [ -z "$BIN" ]; then
    for b in "$TARGET/release/balp-agent" "$TARGET/debug/balp-agent"; do
        if [ -x "$b" ]; then BIN="$b"; break; fi
    done
fi
[ -x "${BIN:-}" ] || { echo "no balp-agent binary; build it first (cargo build)" >&2; exit 2; }

WORK="$(mktemp -d)"
AGENT_PID=""
WRITER_PID=""
cleanup() {
    [ -n "$WRITER_PID" ] && kill "$WRITER_PID" 2>/dev/null || true
    [ -n "$AGENT_PID" ] && kill "$AGENT_PID" 2>/dev/null || true
    wait 2>/dev/null || true
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

LOG="$WORK/logs/access.log"
mkdir -p "$WORK/logs"
cat > "$WORK/config.toml" <<TOML
[agent]
state_dir = "state"
hostname = "torture"
[[sources]]
name = "fhir"
type = "file"
include = ["$LOG"]
read_from = "beginning"
decode = "raw"
parsers = ["fhir_access"]
poll_interval = "20ms"
[output]
type = "directory"
path = "out"
max_events = 1000
flush_interval = "200ms"
TOML

"$BIN" run -c "$WORK/config.toml" 2>"$WORK/agent.log" &
AGENT_PID=$!

# The writer: batches of 10 lines under an flock (the rotator takes it to pause writes);
# reopens when the path is another file, or after a "lazy" hint file disappears.
cat > "$WORK/writer.py" <<'PY'
import fcntl, os, sys, time
log, lock_path, count_path, lazy_path = sys.argv[1:5]
lock = open(lock_path, "w")
f = open(log, "a")
n = 0
while not os.path.exists(count_path + ".stop"):
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        st = None
        try:
            st = os.stat(log)
        except FileNotFoundError:
            pass
        if (st is None or st.st_ino != os.fstat(f.fileno()).st_ino) and not os.path.exists(lazy_path):
            f.close()
            f = open(log, "a")
        f.write("".join(
            f'10.1.2.3 - - [25/Nov/2026:15:25:33 +0000] "GET /fhir/Patient/{i} HTTP/1.1" 200 40 "-" "curl/7.88.1" user="dr.smith" xff="-" rid="req{i:08d}" rt=0.001\n'
            for i in range(n, n + 10)))
        f.flush()
        n += 10
        with open(count_path + ".tmp", "w") as c:
            c.write(str(n))
        os.replace(count_path + ".tmp", count_path)
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
    time.sleep(0.01)
PY
python3 "$WORK/writer.py" "$LOG" "$WORK/lock" "$WORK/count" "$WORK/lazy" &
WRITER_PID=$!

# Caught up = the saved position of the live file's stream equals its size.
caught_up() {
    python3 - "$LOG" "$WORK/state/positions.json" <<'PY'
import json, os, sys
log, pos = sys.argv[1:3]
try:
    st = os.stat(log)
    entries = json.load(open(pos))["positions"]
except Exception:
    sys.exit(1)
prefix = f"file:{st.st_dev}:{st.st_ino}:"
sys.exit(0 if st.st_size == 0 or any(e["key"].startswith(prefix) and e["offset"] == st.st_size for e in entries) else 1)
PY
}

shift_rotated() {
    for i in 4 3 2 1; do
        [ -e "$LOG.$i" ] && mv -f "$LOG.$i" "$LOG.$((i + 1))"
    done
    rm -f "$LOG.5"
}

# Rotations start once the agent follows the first file (a file renamed away before the
# agent ever saw it cannot be read: nothing to test there).
for _ in $(seq 1 600); do caught_up && break; sleep 0.05; done

declare -A done_kinds=()
for ((r = 1; r <= ROTATIONS; r++)); do
    # Each live file lives at least 2.5 poll intervals: one renamed and deleted before any
    # poll saw it is invisible to a polling reader.
    sleep "0.0$((RANDOM % 5 + 5))"
    # The writer recreates the live file with its next batch.
    while [ ! -s "$LOG" ]; do sleep 0.005; done
    case $((RANDOM % 10)) in
        0|1|2|3) kind=rename
           shift_rotated; mv "$LOG" "$LOG.1" ;;
        4|5) kind=lazy
           touch "$WORK/lazy"; shift_rotated; mv "$LOG" "$LOG.1"
           sleep 0.05; rm -f "$WORK/lazy" ;;
        6|7|8) kind=delete
           shift_rotated; mv "$LOG" "$LOG.1"; sleep 0.02; rm -f "$LOG.1" ;;
        9) kind=truncate
           exec 9>"$WORK/lock"; flock 9
           # Positions are saved every second: wait for the agent to have read everything.
           for _ in $(seq 1 600); do caught_up && break; sleep 0.05; done
           shift_rotated; cp "$LOG" "$LOG.1"; truncate -s 0 "$LOG"
           flock -u 9; exec 9>&- ;;
    esac
    done_kinds[$kind]=$(( ${done_kinds[$kind]:-0} + 1 ))
    (( r % 100 == 0 )) && echo "rotations: $r (written: $(cat "$WORK/count" 2>/dev/null || echo 0))"
done
touch "$WORK/count.stop"
wait "$WRITER_PID"
WRITER_PID=""
TOTAL="$(cat "$WORK/count")"
echo "rotation kinds: $(for k in "${!done_kinds[@]}"; do printf '%s=%s ' "$k" "${done_kinds[$k]}"; done)"
echo "lines written: $TOTAL; waiting for the agent"

check() {
    python3 - "$WORK/out" "$TOTAL" "$1" <<'PY'
import json, os, sys
out, total, final = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "final"
ids = {}
for name in sorted(os.listdir(out)) if os.path.isdir(out) else []:
    if not name.endswith(".json"):
        continue
    for e in json.load(open(os.path.join(out, name))).get("entry", []):
        r = e["resource"]
        for ent in r.get("entity", []):
            if ent.get("type", {}).get("code") == "XrequestId":
                ids.setdefault(ent["what"]["identifier"]["value"], set()).add(r["id"])
missing = [i for i in range(total) if f"req{i:08d}" not in ids]
doubled = {k: v for k, v in ids.items() if len(v) > 1}
if final:
    print(f"events for {len(ids)} of {total} lines; missing {len(missing)} {missing[:20]}; "
          f"lines with distinct events {len(doubled)}")
sys.exit(0 if not missing and not doubled else 1)
PY
}
for _ in $(seq 1 60); do check wait && break; sleep 1; done
kill -TERM "$AGENT_PID"; wait "$AGENT_PID" || true; AGENT_PID=""
if check final; then
    echo "OK: nothing lost, nothing doubled"
else
    echo "FAILED (agent log: KEEP=1 to keep $WORK)"; exit 1
fi
