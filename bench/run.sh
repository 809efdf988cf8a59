#!/usr/bin/env bash
# Measures, on this machine and in one run, the same load sent straight to a simulated Electrum
# server, through HAProxy in TCP mode, and through electrum-gateway (fastest and quorum
# policies); then wallet-scale scenarios (10,000 subscriptions over 1,000 wallets, block
# notification fan-out, memory per connection and per subscription), failover, and the
# gateway in front of three real ElectrumX. Prints a table of the goals and one with ratios
# against direct and against HAProxy, and writes them to bench/RESULTS.md.
#
#   bench/run.sh                                      # full run, about 25 minutes
#   DUR=1 REPS=1 WALLETS=100 SUBS=1000 MILLION_WALLETS=1000 MILLION_SUBS=20000 \
#     FANOUT_WALLETS=1000 EX_WALLETS=20 bench/run.sh  # a quick smoke run
#
# Phases (PHASES, default all, in this order):
#   load      16 x 8 and 1 x 1 pass-through load: direct, HAProxy, gateway fastest and quorum
#   fifty     get_balance of one scripthash, 50 x 1 and 50 x 8: direct, HAProxy, gateway
#             `fastest` and gateway with its default policy; block.header 50 x 8
#   wallets   WALLETS wallets subscribe to SUBS scripthashes, then blocks fan out to them
#   million   MILLION_WALLETS (10,000) idle wallets, then MILLION_SUBS (1,000,000) distinct
#             scripthashes subscribed through the gateway: memory per idle connection and
#             RSS growth at the last answer and SETTLE (8) seconds later, the wallets still
#             connected; stops at MILLION_LIMIT seconds (600) or MILLION_RSS_CAP_MIB (4096)
#             of growth and reports how far it got
#   fanout    FANOUT_WALLETS (10,000) wallets subscribed to headers: block to notification
#   failover  the upstream in use is killed under load
#   privacy   the cost of `[privacy] mode = "spread"` (the default) and `isolated` against `off`: gateways
#             with the default policies, get_balance and the mix at 16 x 8, get_balance 1 x 1,
#             and WALLETS wallets subscribing to SUBS scripthashes
#   electrumx three real ElectrumX (.venv, see .ci/run) fed by a simulated bitcoind:
#             EX_WALLETS (200) wallets x 5 subscriptions and cache-hit transaction reads,
#             gateway against one ElectrumX (examples/electrumx_bench.rs)
#
# Environment: DUR (seconds per throughput run, default 4), REPS (runs per cell, default 3;
# the table shows medians), WALLETS (default 1000), SUBS (default 10000), the sizes above,
# PHASES, PORT_BASE (default 24000), CARGO_TARGET_DIR (default target), OUT (default
# bench/RESULTS.md), KEEP (keep the work directory with logs and JSON results). The machine's
# first CPU runs the load generator, the second runs everything under test (taskset), when
# there are at least two.
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
MILLION_WALLETS=${MILLION_WALLETS:-10000}
MILLION_SUBS=${MILLION_SUBS:-1000000}
MILLION_LIMIT=${MILLION_LIMIT:-600}
MILLION_RSS_CAP_MIB=${MILLION_RSS_CAP_MIB:-4096}
# Seconds after the last subscription is answered before memory is read again (the gateway
# returns a burst's freed memory to the system every 5 s).
SETTLE=${SETTLE:-8}
FANOUT_WALLETS=${FANOUT_WALLETS:-10000}
EX_WALLETS=${EX_WALLETS:-200}
PHASES=${PHASES:-load fifty wallets million fanout failover privacy electrumx}
OUT=${OUT:-$ROOT/bench/RESULTS.md}
export RUST_BACKTRACE=0 RUST_LOG=${RUST_LOG:-warn}

need=()
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
command -v jq >/dev/null 2>&1 || need+=(jq)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Thousands of wallet connections: one descriptor each in the load generator and the gateway,
# two in HAProxy. The soft limit goes up to the hard one (the gateway raises its own too).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
# Above the largest phase's wallets, so that the gateway's session limit never refuses one.
MAX_SESSIONS=$((MILLION_WALLETS > FANOUT_WALLETS ? MILLION_WALLETS : FANOUT_WALLETS))
MAX_SESSIONS=$((MAX_SESSIONS > WALLETS ? MAX_SESSIONS : WALLETS))
MAX_SESSIONS=$((MAX_SESSIONS + 100))

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
    echo "    maxconn $(((NOFILE - 100) / 2))"
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

start_gateway() { # NAME PORT POLICY BACKEND_PORT... ; POLICY fastest, quorum or default
  # GW_PRIVACY (environment of the call): the gateway's `[privacy] mode`; its default if unset.
  local name=$1 port=$2 policy=$3
  shift 3
  local servers=""
  for b in "$@"; do servers+="\"tcp://127.0.0.1:$b\", "; done
  # A fresh data directory: the gateway keeps its verified header chain there, and a chain
  # from an earlier run's mined blocks would outrun the fresh simulator (every upstream
  # demoted as lagging, subscriptions never answered).
  rm -rf "$WORK/$name-data"
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
    echo "[limits]"
    echo "max_sessions = $MAX_SESSIONS"
    # Every simulated wallet connects from 127.0.0.1: one client as far as the per-client
    # limits go, so they are lifted to the gateway-wide ones and the rate limit is off.
    echo "max_sessions_per_client = $MAX_SESSIONS"
    echo "client_rate = 0.0"
    echo "max_subscriptions_per_client = 100000000"
    echo "max_subscriptions = 100000000"
    if [ -n "${GW_PRIVACY:-}" ]; then
      echo "[privacy]"
      echo "mode = \"$GW_PRIVACY\""
    fi
    # `fastest`: every read to the best upstream (the defaults vote on scripthash reads);
    # `quorum`: every upstream read asks all three upstreams. Headers are served from the
    # gateway's verified chain either way.
    # `default`: the gateway's own policies (scripthash reads voted, quorum of 2).
    if [ "$policy" = quorum ]; then
      echo "[routing]"
      echo "quorum = 3"
    fi
    if [ "$policy" != default ]; then
      echo "[routing.policy]"
      for m in blockchain.scripthash.get_balance blockchain.scripthash.get_history \
        blockchain.scripthash.listunspent blockchain.transaction.get \
        blockchain.transaction.get_merkle; do
        echo "\"$m\" = \"$policy\""
      done
    fi
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

# ---- 1b. fifty wallets reading one scripthash's balance ------------------------------------

if phase fifty; then
echo "== 50 connections, one scripthash (${DUR}s per run)" >&2
start_sim sim-50 "${SIM_PORTS[@]}"
SIM=$LAST_PID
start_haproxy haproxy-50 $((P + 100)) roundrobin "${SIM_PORTS[@]}"
HAP=$LAST_PID
start_gateway gw-50 $((P + 200)) fastest "${SIM_PORTS[@]}"
GW=$LAST_PID
start_gateway gwd-50 $((P + 202)) default "${SIM_PORTS[@]}"
GWD=$LAST_PID
declare -A URL50=(
  [direct]="tcp://127.0.0.1:${SIM_PORTS[0]}" [haproxy]="tcp://127.0.0.1:$((P + 100))"
  [gateway]="tcp://127.0.0.1:$((P + 200))" [default]="tcp://127.0.0.1:$((P + 202))"
)
declare -A PID50=([direct]=$SIM [haproxy]=$HAP [gateway]=$GW [default]=$GWD)
for r in $(seq "$REPS"); do
  for k in 1 8; do
    for t in direct haproxy gateway default; do
      bench "fifty$k-$t@$r" --server "${URL50[$t]}" --pid "${PID50[$t]}" --connections 50 \
        --pipeline "$k" --duration "$DUR" --warmup 0.5 --method blockchain.scripthash.get_balance --scripthashes 1
    done
  done
  for t in direct haproxy gateway; do
    bench "header50-$t@$r" --server "${URL50[$t]}" --pid "${PID50[$t]}" --connections 50 \
      --pipeline 8 --duration "$DUR" --warmup 0.5 --method blockchain.block.header
  done
done
stop "$GW" "$GWD" "$HAP" "$SIM"
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
    --connections "$WALLETS" --subscriptions "$SUBS" --pipeline 10 --settle "$SETTLE"
  bench "fanout-$t@$r" --scenario fanout --server "$url" --pid "$pid" \
    --control "tcp://127.0.0.1:${SIM_PORTS[0]}" --connections "$WALLETS" \
    --subscriptions "$SUBS" --pipeline 10 --rounds 5
  stop "${pids[@]}"
done
done
fi

# ---- 2a. the cost of privacy ------------------------------------------------------------------

if phase privacy; then
echo "== privacy: spread against off" >&2
for r in $(seq "$REPS"); do
  for mode in off spread isolated; do
    start_sim sim-p "${SIM_PORTS[@]}"
    sim=$LAST_PID
    GW_PRIVACY=$mode start_gateway gw-p-$mode $((P + 200)) default "${SIM_PORTS[@]}"
    gw=$LAST_PID
    url="tcp://127.0.0.1:$((P + 200))"
    for m in blockchain.scripthash.get_balance mix; do
      bench "priv-$mode-$m@$r" --server "$url" --pid "$gw" --connections 16 --pipeline 8 \
        --duration "$DUR" --warmup 0.5 --method "$m"
    done
    bench "privlat-$mode@$r" --server "$url" --pid "$gw" --connections 1 --pipeline 1 \
      --duration 2 --warmup 0.5 --method blockchain.scripthash.get_balance
    bench "privsubs-$mode@$r" --scenario subscriptions --server "$url" --pid "$gw" \
      --connections "$WALLETS" --subscriptions "$SUBS" --pipeline 10
    stop "$gw" "$sim"
  done
done
fi

# ---- 2b. a million subscriptions over ten thousand wallets ---------------------------------

if phase million; then
echo "== $MILLION_WALLETS wallets, $MILLION_SUBS subscriptions through the gateway" >&2
start_sim sim-m "${SIM_PORTS[@]}"
sim=$LAST_PID
start_gateway gw-m $((P + 200)) fastest "${SIM_PORTS[@]}"
gw=$LAST_PID
# Wallets connect and send server.version only (memory per idle connection), then subscribe to
# distinct scripthashes; a limit stops the run where it is and the report says how far it got.
bench "million-gateway@1" --scenario subscriptions --server "tcp://127.0.0.1:$((P + 200))" \
  --pid "$gw" --connections "$MILLION_WALLETS" --subscriptions "$MILLION_SUBS" --pipeline 10 \
  --subscribe-limit "$MILLION_LIMIT" --max-rss-growth-mib "$MILLION_RSS_CAP_MIB" --settle "$SETTLE"
stop "$gw" "$sim"
fi

# ---- 2c. block notification fan-out at ten thousand wallets ---------------------------------

if phase fanout; then
echo "== fan-out to $FANOUT_WALLETS wallets" >&2
# HAProxy holds two descriptors per wallet (the wallet's and the upstream's).
FANOUT_TARGETS=(direct gateway)
if [ $((2 * FANOUT_WALLETS + 100)) -le "$NOFILE" ]; then FANOUT_TARGETS+=(haproxy); fi
for t in "${FANOUT_TARGETS[@]}"; do
  start_sim sim-f-$t "${SIM_PORTS[@]}"
  sim=$LAST_PID
  pids=("$sim")
  case $t in
    direct) url="tcp://127.0.0.1:${SIM_PORTS[0]}" pid=$sim ;;
    haproxy)
      start_haproxy haproxy-f $((P + 100)) roundrobin "${SIM_PORTS[@]}"
      url="tcp://127.0.0.1:$((P + 100))" pid=$LAST_PID
      pids+=("$LAST_PID")
      ;;
    gateway)
      start_gateway gw-f $((P + 200)) fastest "${SIM_PORTS[@]}"
      url="tcp://127.0.0.1:$((P + 200))" pid=$LAST_PID
      pids+=("$LAST_PID")
      ;;
  esac
  # One scripthash per wallet besides the headers, as a wallet with one address would have.
  bench "bigfanout-$t@1" --scenario fanout --server "$url" --pid "$pid" \
    --control "tcp://127.0.0.1:${SIM_PORTS[0]}" --connections "$FANOUT_WALLETS" \
    --subscriptions "$FANOUT_WALLETS" --pipeline 10 --rounds 10
  stop "${pids[@]}"
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

# ---- 4. three real ElectrumX ---------------------------------------------------------------

if phase electrumx; then
echo "== $EX_WALLETS wallets in front of three ElectrumX" >&2
# The driver starts a simulated bitcoind, three ElectrumX indexing it, and the gateway in
# front; it checks every answer and prints one JSON line (examples/electrumx_bench.rs).
export ELECTRUMX_BIN=${ELECTRUMX_BIN:-$ROOT/.venv/bin/electrumx_server}
if cargo build --release --quiet --example electrumx_bench &&
  "${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/electrumx_bench" --wallets "$EX_WALLETS" \
    --duration "$DUR" >"$RES/electrumx@1.json" 2>"$WORK/electrumx.log"; then
  :
else
  echo "  electrumx failed; its cells stay empty (log: $WORK/electrumx.log)" >&2
  tail -20 "$WORK/electrumx.log" >&2
  rm -f "$RES/electrumx@1.json"
fi
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
  row "memory per subscription, $SETTLE s after the last answer (bytes)" \
    "$(j subs-direct '.memory.per_subscription_settled_bytes // "-"')" \
    "$(j subs-haproxy '.memory.per_subscription_settled_bytes // "-"')" \
    "$(j subs-gateway '.memory.per_subscription_settled_bytes // "-"')"
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

# The figures the gateway is held to, with their baselines from this same run.
GOALS=$WORK/goals.md
goal() { # LABEL GOAL(">= X" or "<= X") VALUE DETAIL
  local met
  met=$(awk -v v="$3" -v g="$2" 'BEGIN {
    split(g, p, " "); if (v == "-" || v == "") { print "-"; exit }
    if (p[1] == ">=") print (v + 0 >= p[2] + 0 ? "yes" : "**no**"); else print (v + 0 <= p[2] + 0 ? "yes" : "**no**") }')
  printf '| %s | %s | %s | %s | %s |\n' "$1" "$2" "$3" "$met" "$4"
}
mib() { awk -v b="$1" 'BEGIN { if (b == "-") print "-"; else printf "%.0f", b / 1048576 }'; }
kib() { awk -v b="$1" 'BEGIN { if (b == "-") print "-"; else printf "%.1f", b / 1024 }'; }
{
  echo "| figure | goal | measured | met | from (this run) |"
  echo "|---|---|---:|---|---|"
  for k in 1 8; do
    g=$(j "fifty$k-gateway" .rps) h=$(j "fifty$k-haproxy" .rps)
    goal "get_balance of one scripthash, 50 x $k, gateway \`fastest\` / HAProxy, req/s" ">= 1.0" \
      "$(ratio "$g" "$h")" "$(fmt "$g") / $(fmt "$h") req/s; direct $(fmt "$(j "fifty$k-direct" .rps)")"
  done
  g=$(j fifty8-gateway .latency_us.p50) h=$(j fifty8-haproxy .latency_us.p50)
  goal "same, 50 x 8, p50 latency, gateway \`fastest\` / HAProxy" "<= 1.2" "$(ratio "$g" "$h")" \
    "$(fmt "$g") / $(fmt "$h") us"
  g=$(j fifty1-gateway .latency_us.p50) h=$(j fifty1-haproxy .latency_us.p50)
  goal "same, 50 x 1, p50 latency, gateway \`fastest\` / HAProxy" "<= 1.2" "$(ratio "$g" "$h")" \
    "$(fmt "$g") / $(fmt "$h") us"
  for k in 1 8; do
    g=$(j "fifty$k-default" .rps) h=$(j "fifty$k-haproxy" .rps)
    goal "same workload, 50 x $k, gateway default policy (balances voted, quorum 2) / HAProxy, req/s" \
      ">= 1.0" "$(ratio "$g" "$h")" "$(fmt "$g") / $(fmt "$h") req/s"
  done
  ans=$(j million-gateway .subscriptions_answered)
  growth=$(j million-gateway .memory.growth_bytes)
  per=$(j million-gateway .memory.per_subscription_bytes)
  why=$(j million-gateway '.stopped_by // "none"')
  secs=$(j million-gateway .subscribe_s)
  settled=$(j million-gateway '.memory.settled_kb // "-"')
  if [ "$why" = none ] && [ "$settled" != - ]; then
    held=$(awk -v k="$settled" -v s="$(j million-gateway .memory.start_kb)" 'BEGIN { print (k - s) * 1024 }')
    goal "$MILLION_SUBS subscriptions over $MILLION_WALLETS wallets: gateway RSS growth once subscribed (MiB)" \
      "<= 2048" "$(mib "$held")" "$SETTLE s after the last answer, $(fmt "$(j million-gateway .memory.per_subscription_settled_bytes)") B per subscription; at the last answer $(mib "$growth") MiB, $(fmt "$per") B; all answered in $(fmt "$secs") s"
  elif [ "$why" = none ]; then
    goal "$MILLION_SUBS subscriptions over $MILLION_WALLETS wallets: gateway RSS growth (MiB)" \
      "<= 2048" "$(mib "$growth")" "all answered in $(fmt "$secs") s; $(fmt "$per") B per subscription"
  else
    est=$(awk -v c="$(j million-gateway .memory.connected_kb)" -v s="$(j million-gateway .memory.start_kb)" \
      -v p="$per" -v n="$MILLION_SUBS" 'BEGIN { if (p == "-") print "-"; else printf "%.0f", ((c - s) * 1024 + p * n) / 1048576 }')
    goal "$MILLION_SUBS subscriptions over $MILLION_WALLETS wallets: gateway RSS growth (MiB), extrapolated" \
      "<= 2048" "$est" "stopped by the $why after $(fmt "$secs") s at $ans subscriptions, $(mib "$growth") MiB; $(fmt "$per") B per subscription"
  fi
  g=$(j subs-gateway '.subscribe_s * 1000') h=$(j subs-haproxy '.subscribe_s * 1000')
  goal "$SUBS subscriptions from $WALLETS wallets, time to subscribe, gateway / HAProxy" "<= 1.5" \
    "$(ratio "$g" "$h")" "$(fmt "$g") / $(fmt "$h") ms; direct $(fmt "$(j subs-direct '.subscribe_s * 1000')") ms"
  g=$(j electrumx .subscribe_gateway_s) d=$(j electrumx .subscribe_direct_s)
  goal "$EX_WALLETS wallets x 5 subscriptions, three ElectrumX: time until all answered, gateway / one ElectrumX" \
    "<= 2" "$(ratio "$g" "$d")" "$(fmt "$(awk -v x="$g" 'BEGIN { if (x == "-") print "-"; else print x * 1000 }')") / $(fmt "$(awk -v x="$d" 'BEGIN { if (x == "-") print "-"; else print x * 1000 }')") ms"
  g=$(j bigfanout-gateway .latency_us.p99)
  goal "block to header notification at $FANOUT_WALLETS wallets, gateway p99 (ms)" "<= 50" \
    "$(awk -v x="$g" 'BEGIN { if (x == "-") print "-"; else printf "%.1f", x / 1000 }')" \
    "direct $(fmt "$(j bigfanout-direct .latency_us.p99)") us, HAProxy $(fmt "$(j bigfanout-haproxy .latency_us.p99)") us; $(fmt "$(j bigfanout-gateway .errors)") missed"
  g=$(j million-gateway .memory.per_connection_bytes)
  goal "memory per idle wallet connection (server.version only, $MILLION_WALLETS wallets), gateway (KiB)" \
    "<= 8" "$(kib "$g")" "$(fmt "$g") B; with 5+ subscriptions' sessions: $(fmt "$(j subs-gateway .memory.per_connection_bytes)") B"
  g=$(j header50-gateway .rps) d=$(j header50-direct .rps)
  goal "cache-hit reads (block.header), 50 x 8, gateway / direct to the simulator" ">= 2.0" \
    "$(ratio "$g" "$d")" "$(fmt "$g") / $(fmt "$d") req/s; HAProxy $(fmt "$(j header50-haproxy .rps)")"
  g=$(j electrumx .reads_gateway_rps) d=$(j electrumx .reads_direct_rps)
  goal "cache-hit reads (transaction + merkle proof), gateway / one real ElectrumX" ">= 50" \
    "$(ratio "$g" "$d")" "$(fmt "$g") / $(fmt "$d") req/s"
} >"$GOALS"
cat "$GOALS"

PRIVACY=$WORK/privacy.md
{
  echo "## The cost of privacy"
  echo
  echo "Gateways with the default policies (scripthash reads voted) in front of the three"
  echo "endpoints, \`[privacy] mode\` \`spread\` (the default) and \`isolated\` against \`off\`;"
  echo "medians of $REPS."
  echo
  echo "| measurement | off | spread | isolated | spread / off | isolated / off |"
  echo "|---|---:|---:|---:|---:|---:|"
  prow() { # LABEL OFF SPREAD ISOLATED
    echo "| $1 | $(fmt "$2") | $(fmt "$3") | $(fmt "$4") | $(ratio "$3" "$2") | $(ratio "$4" "$2") |"
  }
  for m in blockchain.scripthash.get_balance mix; do
    prow "$(short "$m"), 16 x 8: req/s" "$(j "priv-off-$m" .rps)" "$(j "priv-spread-$m" .rps)" \
      "$(j "priv-isolated-$m" .rps)"
    prow "$(short "$m"): CPU per answer (us)" "$(j "priv-off-$m" .cpu_us_per_request)" \
      "$(j "priv-spread-$m" .cpu_us_per_request)" "$(j "priv-isolated-$m" .cpu_us_per_request)"
  done
  prow "get_balance, 1 x 1: latency p50 (us)" "$(j privlat-off .latency_us.p50)" \
    "$(j privlat-spread .latency_us.p50)" "$(j privlat-isolated .latency_us.p50)"
  prow "$WALLETS wallets subscribe to $SUBS scripthashes: ms" "$(j privsubs-off '.subscribe_s * 1000')" \
    "$(j privsubs-spread '.subscribe_s * 1000')" "$(j privsubs-isolated '.subscribe_s * 1000')"
} >"$PRIVACY"
cat "$PRIVACY"

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
  echo "## Goals"
  echo
  echo "Each figure against its baseline measured in this run (single runs for the million,"
  echo "fan-out at $FANOUT_WALLETS and ElectrumX rows; medians of $REPS otherwise)."
  echo
  cat "$GOALS"
  echo
  cat "$PRIVACY"
  echo
  # Hand-kept: the figures before and after each change, each pair from one run.
  if [ -f "$ROOT/bench/CHANGES.md" ]; then cat "$ROOT/bench/CHANGES.md"; echo; fi
  echo "## All measurements"
  echo
  cat "$TABLE"
  echo
  if [ -f "$ROOT/bench/NOTES.md" ]; then cat "$ROOT/bench/NOTES.md"; fi
} >"$OUT"
echo "written to $OUT" >&2
