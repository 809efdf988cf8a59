#!/usr/bin/env bash
# Measures, on this machine and in one run, the same load sent straight to a simulated Electrum
# server, through HAProxy in TCP mode, and through electrum-gateway (fastest and quorum
# policies); then wallet-scale scenarios (10,000 subscriptions over 1,000 wallets, block
# notification fan-out, memory per connection and per subscription) and failover. Prints one
# table with ratios against direct and against HAProxy and writes it to bench/RESULTS.md.
#
#   bench/run.sh                                      # full run, about 8 minutes
#   DUR=1 REPS=1 WALLETS=100 SUBS=1000 bench/run.sh   # a quick smoke run
#
# Environment: DUR (seconds per throughput run, default 4), REPS (runs per cell, default 3;
# the table shows medians), WALLETS (default 1000), SUBS (default 10000), PHASES (default
# "load wallets failover"), PORT_BASE (default 24000), CARGO_TARGET_DIR (default target), OUT
# (default bench/RESULTS.md), KEEP (keep the work directory with logs and JSON results). The
# machine's first CPU runs the load generator, the second runs everything under test
# (taskset), when there are at least two.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

DUR=${DUR:-4}
REPS=${REPS:-3}
WALLETS=${WALLETS:-1000}
SUBS=${SUBS:-10000}
# Below Linux's ephemeral range (32768-60999), so that the thousands of client connections
# of one phase cannot hold a port the next phase listens on.
P=${PORT_BASE:-24000}
PHASES=${PHASES:-load wallets failover}
OUT=${OUT:-$ROOT/bench/RESULTS.md}
export RUST_BACKTRACE=0 RUST_LOG=${RUST_LOG:-warn}

need=()
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
command -v jq >/dev/null 2>&1 || need+=(jq)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
ulimit -n 20000 2>/dev/null || true

cargo build --release --quiet
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/electrum-gateway

if [ "$(nproc)" -ge 2 ]; then
  LOAD=(taskset -c 0)
  SERVE=(taskset -c 1)
  PINNING="load generator on CPU 0; simulated server, HAProxy and gateway share CPU 1 (taskset)"
else
  LOAD=()
  SERVE=()
  PINNING="not pinned (one CPU)"
fi

WORK=$(mktemp -d)
RES=$WORK/results
mkdir -p "$RES"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -z "${KEEP:-}" ]; then rm -rf "$WORK"; else echo "kept $WORK" >&2; fi
}
trap cleanup EXIT

# ---- processes under test ----------------------------------------------------------------

wait_port() { # PORT [NAME]: waits for a listener; shows NAME's log if none comes
  for _ in $(seq 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "nothing listens on port $1" >&2
  if [ -n "${2:-}" ]; then tail -20 "$WORK/$2.log" >&2; fi
  return 1
}

# Waits until a gateway answers reads (it knows its upstreams' tip).
wait_ready() { # URL
  for _ in $(seq 100); do
    if "$BIN" bench --server "$1" --connections 1 --duration 0.1 \
        --method blockchain.block.header >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  echo "$1 never became ready" >&2
  return 1
}

LAST_PID=
start() { # NAME CMD... ; runs CMD on the serving CPU, logs to $WORK/NAME.log
  local name=$1
  shift
  "${SERVE[@]}" "$@" >"$WORK/$name.log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

stop() { # PID...
  for pid in "$@"; do kill "$pid" 2>/dev/null || true; done
  for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}

start_sim() { # NAME PORT[,FAULTS]...
  local name=$1
  shift
  local args=()
  for ep in "$@"; do args+=(--listen "127.0.0.1:$ep"); done
  start "$name" "$BIN" sim "${args[@]}"
  for ep in "$@"; do wait_port "${ep%%,*}" "$name"; done
}

start_haproxy() { # NAME PORT BALANCE BACKEND_PORT...
  local name=$1 port=$2 balance=$3
  shift 3
  {
    echo "global"
    echo "    maxconn 9000"
    echo "defaults"
    echo "    mode tcp"
    echo "    timeout connect 1s"
    echo "    timeout client 10m"
    echo "    timeout server 10m"
    echo "    retries 2"
    echo "    option redispatch"
    echo "frontend wallets"
    echo "    bind 127.0.0.1:$port"
    echo "    default_backend electrum"
    echo "backend electrum"
    echo "    balance $balance"
    for b in "$@"; do echo "    server s$b 127.0.0.1:$b check inter 200 fall 1 rise 2"; done
  } >"$WORK/$name.cfg"
  start "$name" haproxy -f "$WORK/$name.cfg" -db
  wait_port "$port" "$name"
}

start_gateway() { # NAME PORT POLICY BACKEND_PORT...
  local name=$1 port=$2 policy=$3
  shift 3
  local servers=""
  for b in "$@"; do servers+="\"tcp://127.0.0.1:$b\", "; done
  {
    echo "network = \"regtest\""
    echo "data_dir = \"$WORK/$name-data\""
    echo "[listen]"
    echo "tcp = \"127.0.0.1:$port\""
    echo "tls = \"\""
    echo "http = \"\""
    echo "[upstreams]"
    echo "servers = [${servers%, }]"
    echo "use_server_list = false"
    echo "reconnect_initial_secs = 0.2"
    # `fastest`: every read to the best upstream (the defaults vote on scripthash reads);
    # `quorum`: every upstream read asks all three upstreams. Headers are served from the
    # gateway's verified chain either way.
    if [ "$policy" = quorum ]; then
      echo "[routing]"
      echo "quorum = 3"
    fi
    echo "[routing.policy]"
    for m in blockchain.scripthash.get_balance blockchain.scripthash.get_history \
      blockchain.scripthash.listunspent blockchain.transaction.get \
      blockchain.transaction.get_merkle; do
      echo "\"$m\" = \"$policy\""
    done
  } >"$WORK/$name.toml"
  start "$name" "$BIN" --config "$WORK/$name.toml"
  wait_port "$port" "$name"
  wait_ready "tcp://127.0.0.1:$port"
}

bench() { # RESULT_NAME ARGS... ; runs the load generator on its CPU, keeps the JSON
  local name=$1
  shift
  echo "  $name" >&2
  if ! "${LOAD[@]}" "$BIN" bench --json --label "$name" "$@" >"$RES/$name.json"; then
    echo "  $name failed; its cells stay empty" >&2
    rm -f "$RES/$name.json"
  fi
}

SIM_PORTS=($((P + 1)) $((P + 2)) $((P + 3)))
phase() { [[ " $PHASES " == *" $1 "* ]]; }
WORKLOADS=(mix blockchain.scripthash.get_balance blockchain.block.header blockchain.transaction.get)

# ---- 1. the same load: direct, HAProxy, gateway -------------------------------------------

if phase load; then
echo "== pass-through load (${DUR}s per run)" >&2
start_sim sim "${SIM_PORTS[@]}"
SIM=$LAST_PID
start_haproxy haproxy $((P + 100)) roundrobin "${SIM_PORTS[@]}"
HAP=$LAST_PID
start_gateway gw $((P + 200)) fastest "${SIM_PORTS[@]}"
GW=$LAST_PID
start_gateway gwq $((P + 201)) quorum "${SIM_PORTS[@]}"
GWQ=$LAST_PID

declare -A TARGET_URL=(
  [direct]="tcp://127.0.0.1:${SIM_PORTS[0]}" [haproxy]="tcp://127.0.0.1:$((P + 100))"
  [gateway]="tcp://127.0.0.1:$((P + 200))" [quorum]="tcp://127.0.0.1:$((P + 201))"
)
declare -A TARGET_PID=([direct]=$SIM [haproxy]=$HAP [gateway]=$GW [quorum]=$GWQ)
TARGETS=(direct haproxy gateway quorum)
# Targets take turns on each workload, REPS times; the table shows each cell's median, so a
# burst of other work on the machine spoils one run of one cell, not the comparison.
for r in $(seq "$REPS"); do
  for m in mix blockchain.scripthash.get_balance; do
    for t in "${TARGETS[@]}"; do
      bench "lat-$t-$m@$r" --server "${TARGET_URL[$t]}" --pid "${TARGET_PID[$t]}" \
        --connections 1 --pipeline 1 --duration 2 --warmup 0.5 --method "$m"
    done
  done
  for m in "${WORKLOADS[@]}"; do
    for t in "${TARGETS[@]}"; do
      bench "tput-$t-$m@$r" --server "${TARGET_URL[$t]}" --pid "${TARGET_PID[$t]}" \
        --connections 16 --pipeline 8 --duration "$DUR" --warmup 0.5 --method "$m"
    done
  done
done
stop "$GW" "$GWQ" "$HAP" "$SIM"
fi

# ---- 2. wallets: subscriptions, memory, fan-out ----------------------------------------------

if phase wallets; then
echo "== $WALLETS wallets, $SUBS subscriptions" >&2
for r in $(seq "$REPS"); do
for t in direct haproxy gateway; do
  start_sim sim-$t "${SIM_PORTS[@]}"
  sim=$LAST_PID
  pids=("$sim")
  case $t in
    direct) url="tcp://127.0.0.1:${SIM_PORTS[0]}" pid=$sim ;;
    haproxy)
      start_haproxy haproxy-$t $((P + 100)) roundrobin "${SIM_PORTS[@]}"
      url="tcp://127.0.0.1:$((P + 100))" pid=$LAST_PID
      pids+=("$LAST_PID")
      ;;
    gateway)
      start_gateway gw-$t $((P + 200)) fastest "${SIM_PORTS[@]}"
      url="tcp://127.0.0.1:$((P + 200))" pid=$LAST_PID
      pids+=("$LAST_PID")
      ;;
  esac
  bench "subs-$t@$r" --scenario subscriptions --server "$url" --pid "$pid" \
    --connections "$WALLETS" --subscriptions "$SUBS" --pipeline 10
  bench "fanout-$t@$r" --scenario fanout --server "$url" --pid "$pid" \
    --control "tcp://127.0.0.1:${SIM_PORTS[0]}" --connections "$WALLETS" \
    --subscriptions "$SUBS" --pipeline 10 --rounds 5
  stop "${pids[@]}"
done
done
fi

# ---- 3. failover: kill the upstream in use --------------------------------------------------

if phase failover; then
echo "== failover" >&2
A=$((P + 11))
B=$((P + 12))
for t in gateway haproxy; do
  start_sim sim-a-$t $A
  a=$LAST_PID
  # B lags one block behind, so both the gateway and HAProxy (balance first) use A.
  start_sim sim-b-$t "$B,lag=1"
  b=$LAST_PID
  if [ $t = gateway ]; then
    start_gateway gw-fail $((P + 210)) fastest $A $B
    url="tcp://127.0.0.1:$((P + 210))"
  else
    start_haproxy haproxy-fail $((P + 110)) first $A $B
    url="tcp://127.0.0.1:$((P + 110))"
  fi
  front=$LAST_PID
  bench "fail-$t@1" --scenario failover --server "$url" --kill-pid "$a" --kill-after 2 \
    --connections 4 --pipeline 1 --duration 5 --method blockchain.scripthash.get_balance
  stop "$front" "$b" "$a"
done
fi

# ---- the table -----------------------------------------------------------------------------

j() { # RESULT_NAME JQ_EXPR ; the median over the runs of RESULT_NAME, or "-"
  local files=("$RES/$1@"*.json)
  if [ ! -s "${files[0]}" ]; then
    echo "-"
    return
  fi
  jq -s -r "map(($2) // empty) | sort | if length == 0 then \"-\" else .[length / 2 | floor] end" \
    "${files[@]}"
}
ratio() { # A B ; A / B with two decimals
  awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'
}
fmt() { # NUMBER ; rounds to a readable precision
  awk -v x="$1" 'BEGIN { if (x == "-") print "-"; else if (x + 0 >= 100 || x + 0 <= -100) printf "%.0f", x; else printf "%.1f", x }'
}
row() { # LABEL DIRECT HAPROXY GATEWAY [NOTE] ; higher-is-better or not, ratios are gateway / other
  printf '| %s | %s | %s | %s | %s | %s |\n' "$1" "$(fmt "$2")" "$(fmt "$3")" "$(fmt "$4")" \
    "$(ratio "$4" "$2")" "$(ratio "$4" "$3")"
}

short() { case $1 in mix) echo "mix" ;; *) echo "${1##*.}" ;; esac; }

TABLE=$WORK/table.md
{
  echo "| measurement | direct | HAProxy | gateway | gateway / direct | gateway / HAProxy |"
  echo "|---|---:|---:|---:|---:|---:|"
  for m in mix blockchain.scripthash.get_balance; do
    s=$(short "$m")
    for q in p50 p99; do
      row "$s, 1 connection x 1: latency $q (us)" \
        "$(j "lat-direct-$m" ".latency_us.$q")" "$(j "lat-haproxy-$m" ".latency_us.$q")" \
        "$(j "lat-gateway-$m" ".latency_us.$q")"
    done
  done
  for m in "${WORKLOADS[@]}"; do
    s=$(short "$m")
    [ "$m" = blockchain.transaction.get ] && s="$s (cache-hit workload)"
    row "$s, 16 x 8 in flight: req/s" "$(j "tput-direct-$m" .rps)" \
      "$(j "tput-haproxy-$m" .rps)" "$(j "tput-gateway-$m" .rps)"
    row "$s, 16 x 8: latency p50 (us)" "$(j "tput-direct-$m" .latency_us.p50)" \
      "$(j "tput-haproxy-$m" .latency_us.p50)" "$(j "tput-gateway-$m" .latency_us.p50)"
    row "$s, 16 x 8: latency p99 (us)" "$(j "tput-direct-$m" .latency_us.p99)" \
      "$(j "tput-haproxy-$m" .latency_us.p99)" "$(j "tput-gateway-$m" .latency_us.p99)"
    row "$s: CPU per answer of the hop (us)" "$(j "tput-direct-$m" .cpu_us_per_request)" \
      "$(j "tput-haproxy-$m" .cpu_us_per_request)" "$(j "tput-gateway-$m" .cpu_us_per_request)"
  done
  for m in "${WORKLOADS[@]}"; do
    row "$(short "$m"), quorum of 3 (gateway column), 16 x 8: req/s" \
      "$(j "tput-direct-$m" .rps)" "$(j "tput-haproxy-$m" .rps)" "$(j "tput-quorum-$m" .rps)"
  done
  row "quorum mix, 1 x 1: latency p50 (us)" "$(j lat-direct-mix .latency_us.p50)" \
    "$(j lat-haproxy-mix .latency_us.p50)" "$(j lat-quorum-mix .latency_us.p50)"
  row "$WALLETS wallets subscribe to $SUBS scripthashes: ms" "$(j subs-direct '.subscribe_s * 1000')" \
    "$(j subs-haproxy '.subscribe_s * 1000')" "$(j subs-gateway '.subscribe_s * 1000')"
  row "subscribe latency p99 (us)" "$(j subs-direct .latency_us.p99)" \
    "$(j subs-haproxy .latency_us.p99)" "$(j subs-gateway .latency_us.p99)"
  row "memory per wallet connection (bytes, RSS of the process under test)" \
    "$(j subs-direct .memory.per_connection_bytes)" "$(j subs-haproxy .memory.per_connection_bytes)" \
    "$(j subs-gateway .memory.per_connection_bytes)"
  row "memory per subscription (bytes)" "$(j subs-direct .memory.per_subscription_bytes)" \
    "$(j subs-haproxy .memory.per_subscription_bytes)" "$(j subs-gateway .memory.per_subscription_bytes)"
  for q in p50 p99 max; do
    row "block to header notification, $WALLETS wallets: $q (us)" \
      "$(j fanout-direct ".latency_us.$q")" "$(j fanout-haproxy ".latency_us.$q")" \
      "$(j fanout-gateway ".latency_us.$q")"
  done
  row "block to last wallet notified, median of 5 blocks (us)" \
    "$(j fanout-direct .last_wallet_us.p50)" "$(j fanout-haproxy .last_wallet_us.p50)" \
    "$(j fanout-gateway .last_wallet_us.p50)"
  row "notifications missed" "$(j fanout-direct .errors)" "$(j fanout-haproxy .errors)" \
    "$(j fanout-gateway .errors)"
  row "upstream killed: longest time without an answer (ms)" "-" \
    "$(j fail-haproxy .longest_stall_ms)" "$(j fail-gateway .longest_stall_ms)"
  row "upstream killed: first answer to a request sent after the kill (ms)" "-" \
    "$(j fail-haproxy .first_answer_after_kill_ms)" "$(j fail-gateway .first_answer_after_kill_ms)"
  row "upstream killed: errors seen by wallets" "-" "$(j fail-haproxy .errors_after_kill)" \
    "$(j fail-gateway .errors_after_kill)"
} >"$TABLE"

cat "$TABLE"

cpu=$(awk -F: '/model name/ { sub(/^ +/, "", $2); print $2; exit }' /proc/cpuinfo)
mem=$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
{
  echo "# Benchmark results"
  echo
  echo "Written by \`bench/run.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC'). Machine: $(nproc) CPUs"
  echo "($cpu), $mem memory, Linux $(uname -r), $(rustc --version), $(haproxy -v | head -1 | cut -d' ' -f1-3)."
  echo "Pinning: $PINNING. Load average when the run ended: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "Every cell is the median of $REPS runs, the targets taking turns on each workload: other"
  echo "work on the machine shows up as noise in req/s and latency; CPU per answer is measured"
  echo "from the process's own CPU time and is the steadiest figure."
  echo
  echo "Targets: **direct** is \`electrum-gateway sim\` (three endpoints, no fault, one chain);"
  echo "**HAProxy** is TCP mode, round robin over the three endpoints; **gateway** is"
  echo "electrum-gateway with the three endpoints as upstreams, \`fastest\` policy (the quorum rows"
  echo "use \`[routing.policy]\` set to \`quorum\` for every read, quorum of 3). Loads: \`mix\` is a"
  echo "wallet's sync (get_history, get_balance, listunspent, transaction.get, get_merkle,"
  echo "block.header, ping); one method otherwise. \`x K\` is requests in flight per connection."
  echo "Ratios are gateway / other: above 1 is better for req/s, worse for latency, CPU and memory."
  echo
  cat "$TABLE"
  echo
  if [ -f "$ROOT/bench/NOTES.md" ]; then cat "$ROOT/bench/NOTES.md"; fi
} >"$OUT"
echo "written to $OUT" >&2
