#!/usr/bin/env bash
# Builds and runs a libFuzzer target for one of the tensor-file readers.
#
#   Fuzz/run.sh [npy|safetensors] [seconds] [extra libFuzzer flags...]
#
# The target (Fuzz/FuzzNPY.swift or Fuzz/FuzzSafeTensors.swift) is compiled with
# `swiftc -sanitize=fuzzer,address` together with every source of the
# FastVideoDistributed module, into one module of that name, and linked with the
# C shims (Sources/CFVDShims, compiled by clang with -fsanitize=address). All output
# goes under .build-fuzz/ (gitignored):
#
#   .build-fuzz/<target>/fuzz-<target>   the fuzzer binary (rebuilt when a source is newer)
#   .build-fuzz/corpus/<target>/         the corpus libFuzzer grows; kept between runs
#   .build-fuzz/seeds/<target>/          small valid files it starts from (refreshed each run)
#   .build-fuzz/crashes/<target>/        crash-*, oom-*, timeout-* inputs, kept
#   .build-fuzz/logs/<target>-<time>.log the full libFuzzer output of each run
#
# Environment: FUZZ_DIR (default .build-fuzz), FUZZ_OPT (swiftc optimisation, default -O),
# FUZZ_KEEP_GOING=1 (keep fuzzing after a crash, in libFuzzer's fork mode).
# Exit status: 0 for a clean run, 1 when libFuzzer found something (see the crashes folder).
set -euo pipefail

target="${1:-npy}"
seconds="${2:-600}"
shift $(( $# < 2 ? $# : 2 ))

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

case "$target" in
  npy) source_file="Fuzz/FuzzNPY.swift" ;;
  safetensors) source_file="Fuzz/FuzzSafeTensors.swift" ;;
  *) echo "usage: Fuzz/run.sh [npy|safetensors] [seconds] [libFuzzer flags...]" >&2; exit 2 ;;
esac
case "$seconds" in
  ''|*[!0-9]*) echo "error: seconds must be a whole number, got '$seconds'" >&2; exit 2 ;;
esac

fuzz_dir="${FUZZ_DIR:-$root/.build-fuzz}"
build="$fuzz_dir/$target"
binary="$build/fuzz-$target"
corpus="$fuzz_dir/corpus/$target"
seeds="$fuzz_dir/seeds/$target"
crashes="$fuzz_dir/crashes/$target"
logs="$fuzz_dir/logs"
mkdir -p "$build/include" "$corpus" "$crashes" "$logs"

# --- Build -------------------------------------------------------------------------
mapfile -t library_sources < <(find Sources/FastVideoDistributed -name '*.swift' | LC_ALL=C sort)
shims_c="Sources/CFVDShims/shims.c"
shims_include="$root/Sources/CFVDShims/include"

needs_build=1
if [[ -x "$binary" ]]; then
  newer="$(find "${library_sources[@]}" "$source_file" Fuzz/FuzzSupport.swift "$shims_c" "$shims_include" Fuzz/run.sh -newer "$binary" | head -n 1)"
  [[ -z "$newer" ]] && needs_build=0
fi
if (( needs_build )); then
  echo "== building $binary"
  # SwiftPM generates this module map for a C target's include folder; do the same.
  cat > "$build/include/module.modulemap" <<EOF
module CFVDShims {
    umbrella header "$shims_include/CFVDShims.h"
    export *
}
EOF
  clang -fsanitize=address,fuzzer-no-link -O1 -g -I "$shims_include" \
    -c "$shims_c" -o "$build/shims.o"
  swiftc -sanitize=fuzzer,address -parse-as-library -swift-version 6 \
    "${FUZZ_OPT:--O}" -g -module-name FastVideoDistributed \
    -I "$build/include" -I "$shims_include" \
    -use-ld=lld \
    "${library_sources[@]}" "$source_file" Fuzz/FuzzSupport.swift "$build/shims.o" \
    -o "$binary"
fi

# --- Seeds: small valid files ------------------------------------------------------
# `le VALUE COUNT`: VALUE as COUNT little-endian bytes, written as \xNN escapes for printf %b.
le() { local i; for (( i = 0; i < $2; i++ )); do printf '\\x%02x' $(( ($1 >> (8 * i)) & 255 )); done; }
rm -rf "$seeds"
mkdir -p "$seeds"
if [[ "$target" == npy ]]; then
  for f in Tests/FastVideoDistributedTests/Fixtures/*.npy Tests/FVDCommandLineTests/Fixtures/apply/*/in/rank0.npy; do
    [[ -f "$f" ]] && cp "$f" "$seeds/$(echo "$f" | tr '/' '_')"
  done
  # Versions 2.0 and 3.0 (a 4-byte header length) are not among the fixtures.
  header="{'descr': '<i2', 'fortran_order': False, 'shape': (2,), }"$'\n'
  printf '\x93NUMPY\x02\x00%b%s\x01\x00\x02\x00' "$(le ${#header} 4)" "$header" > "$seeds/generated_v2.npy"
  header="{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1), }"$'\n'
  printf '\x93NUMPY\x03\x00%b%s\x00\x00\x80\x3f' "$(le ${#header} 4)" "$header" > "$seeds/generated_v3.npy"
else
  for f in Tests/FastVideoDistributedTests/Fixtures/*.safetensors \
           Tests/FVDCommandLineTests/Fixtures/apply/*/in/rank0.safetensors; do
    [[ -f "$f" ]] && cp "$f" "$seeds/$(echo "$f" | tr '/' '_')"
  done
  # Most dtypes, a zero-sized tensor and a scalar in one small file (25 data bytes).
  header='{"a":{"dtype":"F64","shape":[1],"data_offsets":[0,8]},"b":{"dtype":"BF16","shape":[2],"data_offsets":[8,12]},'
  header+='"c":{"dtype":"I32","shape":[],"data_offsets":[12,16]},"d":{"dtype":"I16","shape":[0,3],"data_offsets":[16,16]},'
  header+='"e":{"dtype":"I8","shape":[1],"data_offsets":[16,17]},"f":{"dtype":"I64","shape":[1],"data_offsets":[17,25]}}'
  printf '%b%s%s' "$(le ${#header} 8)" "$header" "0123456789abcdefghijklmno" > "$seeds/generated_dtypes.safetensors"
fi

# --- Run ---------------------------------------------------------------------------
log="$logs/$target-$(date +%Y%m%d-%H%M%S).log"
flags=(
  -max_total_time="$seconds"
  -timeout=10                 # one input taking over 10 s is a hang
  -rss_limit_mb=2048
  -malloc_limit_mb=64         # inputs are a few KB: a large allocation means a size was trusted
  -dict="Fuzz/$target.dict"
  -artifact_prefix="$crashes/"
  -print_final_stats=1
)
if [[ "${FUZZ_KEEP_GOING:-0}" == 1 ]]; then
  flags+=(-fork=1 -ignore_crashes=1 -ignore_ooms=1 -ignore_timeouts=1)
fi

# The Swift runtime's backtracer would catch the fuzzer's traps itself (and linger);
# let libFuzzer and ASan report them instead.
export SWIFT_BACKTRACE=enable=no
export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=0:detect_leaks=1}"

echo "== fuzzing $target for $seconds s; log: $log"
set +e +o pipefail
"$binary" "${flags[@]}" "$@" "$corpus" "$seeds" 2>&1 | tee "$log" \
  | grep -E '^(#[0-9]+[[:space:]]+(INITED|DONE)|.*Fatal error|==[0-9]+==|SUMMARY|stat::|Done|artifact_prefix|Test unit written)'
status=${PIPESTATUS[0]}
set -e -o pipefail

corpus_files=$(find "$corpus" -type f | wc -l)
corpus_bytes=$(du -sb "$corpus" | cut -f1)
echo "== $target: exit status $status, corpus $corpus_files files ($corpus_bytes bytes) in $corpus"
found=$(find "$crashes" -type f | wc -l)
if (( found > 0 )); then
  echo "== $found finding(s) kept in $crashes:"
  ls -l "$crashes"
fi
(( status == 0 )) || exit 1
