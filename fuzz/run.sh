#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 20) on a copy of its committed corpus
# (fuzz/corpus/TARGET), then prints per target the executions and whether it found anything.
# Exits non-zero if a target found a crash, a timeout or an out-of-memory, or if the fuzzing
# toolchain (cargo +nightly, cargo-fuzz) is missing. New corpus entries are left in
# new-corpus/TARGET in the target directory; findings in fuzz/artifacts/TARGET.
#
# Environment: FUZZ_TARGETS (space-separated, default: all), FUZZ_BUILD (cargo fuzz build
# flags, default "-O -a": optimised, with debug assertions and overflow checks),
# FUZZ_TARGET_DIR (where the instrumented build goes, default fuzz/target).
set -euo pipefail
cd "$(dirname "$0")"

seconds="${1:-20}"
build_flags="${FUZZ_BUILD:--O -a}"
target_dir="${FUZZ_TARGET_DIR:-$PWD/target}"
build_flags="$build_flags --target-dir $target_dir"

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz/run.sh: the nightly toolchain is missing (cargo +nightly); install it with" \
    "'rustup toolchain install nightly'" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz/run.sh: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi

targets="${FUZZ_TARGETS:-$(cargo +nightly fuzz list)}"
# shellcheck disable=SC2086 # the flags are words
cargo +nightly fuzz build $build_flags

mkdir -p logs
summary=()
failed=0
for t in $targets; do
  new="$target_dir/new-corpus/$t"
  mkdir -p "$new" "corpus/$t"
  log="logs/$t.log"
  status=0
  # shellcheck disable=SC2086
  cargo +nightly fuzz run $build_flags "$t" "$new" "corpus/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    >"$log" 2>&1 || status=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2)
  if [ "$status" -eq 0 ]; then
    result="nothing found"
  else
    failed=1
    found=$(grep -o "Test unit written to .*" "$log" | tail -n 1 | sed 's/Test unit written to //')
    result="FOUND (exit $status): ${found:-see fuzz/$log}"
    grep -m 1 -A 3 "panicked at" "$log" >&2 || tail -n 20 "$log" >&2
  fi
  line=$(printf '%-16s %10s execs  cov %6s  %s' "$t" "${execs:-?}" "${cov:-?}" "$result")
  echo "$line"
  summary+=("$line")
done

echo
echo "fuzz: ${seconds} s per target"
printf '%s\n' "${summary[@]}"
exit "$failed"
