#!/usr/bin/env bash
# Where the receive benchmark's time goes: our server alone, in three rounds on fresh
# roots (same load as run_smtp_bench.sh: SESSIONS sessions, MESSAGES x SIZE bytes to
# 10 users of bench.test):
#   accept   local delivery held (control/holdlocal): the rate of SMTP + queue commits
#   deliver  then holdlocal cleared and SIGHUP: the rate of local delivery from the queue
#   both     the normal run: accepting and delivering at the same time
# Each line gives the rate and the server's CPU per message (user and system).  If
# 1/both is about 1/accept + 1/deliver, the two halves do not overlap: they share
# one resource (for one process, the interpreter lock and the core it runs on).
#   bench/receive_split.sh            (from the repository root; ROUNDS=2 repeats)
set -euo pipefail
SESSIONS=${SESSIONS:-20}; MESSAGES=${MESSAGES:-5000}; SIZE=${SIZE:-2048}; ROUNDS=${ROUNDS:-1}
PORT=${PORT:-2535}; BASE=${BASE:-/var/tmp/itwsplit}
PY=${PY:-.venv/bin/python}
HERE=$(cd "$(dirname "$0")" && pwd)
SETTLE=${SETTLE:-$(( $(cat /proc/sys/vm/dirty_expire_centisecs 2>/dev/null || echo 3000) / 100 + 5 ))}

# old roots go first; then the wait lets ext4 reuse their inodes (see run_smtp_bench.sh)
rm -rf "$BASE"; mkdir -p "$BASE"; sleep "$SETTLE"

# user and system CPU seconds of the server and its children (the delivery helper)
ticks() { "$PY" "$HERE/proc_cpu.py" --tree "$1" --user-system; }
start() {  # root [hold] -> sets PID
    "$PY" "$HERE/bench_root.py" "$1" ${2:+--hold-local}
    env -u QUEUE_COUNT ${OUR_ENV:-} .venv/bin/twistd -n --pidfile= --logfile "$1/twistd.log" \
        indimail --root "$1" --smtp "tcp:$PORT:interface=127.0.0.1" ${OUR_ARGS:-} &
    PID=$!
    for _ in $(seq 1 100); do
        (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && return; sleep 0.1
    done
    echo "receive_split: the server did not start" >&2; exit 1
}
load() {  # root with-maildirs
    local md=()
    [ "$2" = 1 ] && md=(--maildirs "$1/mail/*/bench.test/user*/Maildir")
    "$PY" "$HERE/smtp_load.py" --port "$PORT" --sessions "$SESSIONS" --messages "$MESSAGES" \
        --size "$SIZE" --domain bench.test --users 10 "${md[@]}"
}
report() {  # name rate ticks-before ticks-after
    "$PY" -c 'import sys
name, rate, (u0, s0), (u1, s1) = sys.argv[1], float(sys.argv[2]), sys.argv[3].split(), sys.argv[4].split()
n = int(sys.argv[5])
user, system = (float(u1) - float(u0)) * 1000 / n, (float(s1) - float(s0)) * 1000 / n
print(f"  {name:8} {rate:8.1f} msg/s  cpu/msg {user + system:.3f} ms (user {user:.3f}, system {system:.3f})")' \
        "$@" "$MESSAGES"
}
measure() {  # name root with-maildirs json-key -> sets RATE and reports it
    local t0 t1
    t0=$(ticks "$PID")
    RATE=$(load "$2" "$3" | "$PY" -c "import json, sys; print(json.load(sys.stdin)['$4'])")
    t1=$(ticks "$PID")
    report "$1" "$RATE" "$t0" "$t1"
}
delivered() { find "$1"/mail/*/bench.test/user*/Maildir/new -type f | wc -l; }

echo "machine: $(nproc) CPUs, $(uname -r), $(df -hT /var/tmp | awk 'NR==2{print $2" on "$1}')"
for round in $(seq 1 "$ROUNDS"); do
    [ "$round" = 1 ] || sleep "$SETTLE"
    echo "round $round"
    root="$BASE/held-$round"; start "$root" hold
    measure accept "$root" 0 accepted_per_s; accept=$RATE
    echo 0 > "$root/control/holdlocal"
    t0=$(ticks "$PID"); begin=$(date +%s.%N); kill -HUP "$PID"
    while [ "$(delivered "$root")" -lt "$MESSAGES" ]; do sleep 0.02; done
    end=$(date +%s.%N); t1=$(ticks "$PID")
    deliver=$("$PY" -c "print($MESSAGES / ($end - $begin))")
    report deliver "$deliver" "$t0" "$t1"
    kill "$PID"; wait "$PID" 2>/dev/null || true

    sleep "$SETTLE"
    root="$BASE/both-$round"; start "$root"
    measure both "$root" 1 delivered_per_s
    kill "$PID"; wait "$PID" 2>/dev/null || true
    "$PY" -c "a, d, b = $accept, $deliver, $RATE
print(f'  1/(1/accept + 1/deliver) = {1 / (1 / a + 1 / d):.1f} msg/s; both = {b:.1f} msg/s')"
done
