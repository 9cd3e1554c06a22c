#!/usr/bin/env bash
# Builds every fuzz target (fuzz/, cargo-fuzz on the nightly toolchain) and runs each for a
# few seconds on a copy of its corpus, so the targets keep building and a parser regression
# shows up. Longer runs: docs/fuzzing.md. FUZZ_SECONDS sets the time per target (default 5).
# FUZZ_BUILD sets the build flags: the default (`--dev -s none`: unoptimised, no ASan, still
# coverage-guided) builds cold in ~4 min here instead of ~22; ASan runs are docs/fuzzing.md's.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${FUZZ_SECONDS:-5}
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz-smoke: needs the nightly toolchain (rustup toolchain install nightly)" >&2
  exit 1
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/fuzz/target}
read -r -a flags <<<"${FUZZ_BUILD:---dev -s none}"
start=$(date +%s)
cargo +nightly fuzz build "${flags[@]}"
built=$(date +%s)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
passed=0
failed=0
for t in $(cargo +nightly fuzz list); do
  mkdir -p "$work/$t"
  cp -r "fuzz/corpus/$t/." "$work/$t/" 2>/dev/null || true
  # -max_len: the largest seed (an ISO) is ~380 KB; others are far smaller.
  if cargo +nightly fuzz run "${flags[@]}" "$t" "$work/$t" -- -max_total_time="$secs" -rss_limit_mb=2048 \
      -max_len=524288 -print_final_stats=1 >"$work/$t.log" 2>&1; then
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$work/$t.log" | grep -o '[0-9]*$' || echo '?')
    echo "fuzz-smoke: $t ok ($runs runs)"
    passed=$((passed + 1))
  else
    echo "fuzz-smoke: $t FAILED"
    tail -40 "$work/$t.log"
    failed=$((failed + 1))
  fi
done
end=$(date +%s)
echo "fuzz-smoke: build $((built - start)) s, runs $((end - built)) s"
echo "fuzz: $passed passed, $failed failed"
[ "$failed" = 0 ]
