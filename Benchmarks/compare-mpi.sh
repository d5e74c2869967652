#!/usr/bin/env bash
# Side-by-side benchmark: `fvd bench` against Open MPI's own collectives (MPI_Allreduce,
# MPI_Allgather, MPI_Reduce_scatter_block, MPI_Alltoall, MPI_Bcast, MPI_Barrier and an
# MPI_Send/MPI_Recv ping-pong, timed by Benchmarks/peers/mpi_bench.c the same way) on one
# host, per world size. The two sides run in alternating rounds (fvd, MPI, fvd, MPI, …, per
# op), so drift on a noisy host hits both alike; each row is the median of the rounds'
# medians. Prints a table per world size with fvd's times (µs) for its form that returns a
# new tensor and, where it has one, its form that writes the caller's tensor (in place;
# recv(into:)), MPI's time, both bandwidths (input bytes per rank / time, as in
# PERFORMANCE.md), the ratio MPI time / fvd time (> 1: fvd is faster) and whether the row
# meets its target of shared/PERFORMANCE.md. The ratio compares like with like: MPI writes
# into buffers the caller allocated once, so fvd's caller-buffer form is compared where it
# exists, else its allocating form:
#   shm:       <= 32 KB per rank >= 1.0x (the latency floor); 64 KB - 4 MB >= 1.2x;
#              16 - 64 MB >= 1.0x; all_reduce from 64 KB >= 2.0x
#   inprocess: <= 32 KB >= 1.5x (threads share memory); larger as shm
#   mpi:       >= 0.9x (never slower than the same MPI's own collective; reported only below 64 KB)
#
# Environment (defaults in brackets):
#   FVD_TRANSPORT   fvd transport to measure [shm]; `mpi` runs fvd under mpirun (FVD_BIN must
#                   then be built with --traits MPI)
#   WORLD_SIZES     world sizes ["2 4"]
#   OPS             ops ["all_reduce all_gather reduce_scatter all_to_all broadcast barrier sendrecv"]
#   MIN_BYTES, MAX_BYTES, FACTOR   per-rank sizes [8, 64M, 2]
#   WARMUP, ITERS   untimed and timed iterations per round [5, 20]
#   ROUNDS          alternating rounds per side [3]
#   DTYPE           float32 | bfloat16 | float16 [float32] (MPI skips the reductions for 16-bit)
#   FVD_BUILD_DIR   swift build --scratch-path [.build]
#   FVD_BIN         an fvd binary to use as is (skips the swift build)
#   MPIRUN_ARGS     extra mpirun arguments [none]
#   RESULTS_DIR     if set, the raw JSON of every run is kept there
#   STRICT=1        exit 1 when any row misses its target
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FVD_TRANSPORT=${FVD_TRANSPORT:-shm}
WORLD_SIZES=${WORLD_SIZES:-"2 4"}
OPS=${OPS:-"all_reduce all_gather reduce_scatter all_to_all broadcast barrier sendrecv"}
MIN_BYTES=${MIN_BYTES:-8}
MAX_BYTES=${MAX_BYTES:-64M}
FACTOR=${FACTOR:-2}
WARMUP=${WARMUP:-5}
ITERS=${ITERS:-20}
ROUNDS=${ROUNDS:-3}
DTYPE=${DTYPE:-float32}
FVD_BUILD_DIR=${FVD_BUILD_DIR:-$ROOT/.build}
MPIRUN_ARGS=${MPIRUN_ARGS:-}
STRICT=${STRICT:-0}

die() { echo "compare-mpi.sh: $*" >&2; exit 1; }

for tool in mpicc mpirun; do
    command -v "$tool" >/dev/null 2>&1 ||
        die "'$tool' not found: install Open MPI first (Debian/Ubuntu: apt-get install -y libopenmpi-dev openmpi-bin)"
done
command -v python3 >/dev/null 2>&1 || die "python3 is needed to read the JSON results"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/compare-mpi.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
if [[ -n "${RESULTS_DIR:-}" ]]; then mkdir -p "$RESULTS_DIR"; fi

if [[ -n "${FVD_BIN:-}" ]]; then
    FVD=$FVD_BIN
else
    echo "== building fvd (swift build -c release --scratch-path $FVD_BUILD_DIR)" >&2
    swift build -c release --package-path "$ROOT" --scratch-path "$FVD_BUILD_DIR" >&2 ||
        die "swift build failed"
    FVD="$(swift build -c release --package-path "$ROOT" --scratch-path "$FVD_BUILD_DIR" --show-bin-path)/fvd"
fi
[[ -x "$FVD" ]] || die "no fvd binary at $FVD"

echo "== building mpi_bench (mpicc -O2)" >&2
MPI_BENCH="$WORK/mpi_bench"
mpicc -O2 -Wall -Wextra -o "$MPI_BENCH" "$ROOT/Benchmarks/peers/mpi_bench.c" || die "mpicc failed"

# Root may run mpirun only when it says so; more ranks than cores need --oversubscribe.
MPIRUN=(mpirun)
if [[ $(id -u) -eq 0 ]]; then MPIRUN+=(--allow-run-as-root); fi
CORES=$(getconf _NPROCESSORS_ONLN)
# shellcheck disable=SC2206
MPIRUN+=($MPIRUN_ARGS)

COMMON=(-b "$MIN_BYTES" -e "$MAX_BYTES" -f "$FACTOR" --warmup "$WARMUP" --iters "$ITERS" --dtype "$DTYPE")
for W in $WORLD_SIZES; do
    OVERSUB=""
    if ((W > CORES)); then OVERSUB=--oversubscribe; fi
    for op in $OPS; do
        case $op in
            all_reduce | all_gather | reduce_scatter | broadcast | barrier | sendrecv) fvd_op=$op ;;
            all_to_all | all_to_all_4d) op=all_to_all; fvd_op=all_to_all_4d ;;
            *) die "unknown op '$op' (all_reduce, all_gather, reduce_scatter, all_to_all, broadcast, barrier, sendrecv)" ;;
        esac
        for ((round = 1; round <= ROUNDS; round++)); do
            echo "== W=$W $op round $round/$ROUNDS: fvd bench --transport $FVD_TRANSPORT, then mpi_bench" >&2
            LAUNCH=()
            if [[ $FVD_TRANSPORT == mpi ]]; then LAUNCH=("${MPIRUN[@]}" -n "$W" $OVERSUB); fi
            "${LAUNCH[@]}" "$FVD" bench --transport "$FVD_TRANSPORT" --world-size "$W" --op "$fvd_op" "${COMMON[@]}" \
                --json "$WORK/fvd-w$W-$op-r$round.json" >"$WORK/fvd.txt" 2>&1 || {
                cat "$WORK/fvd.txt" >&2
                die "fvd bench --transport $FVD_TRANSPORT failed"
            }
            "${MPIRUN[@]}" -n "$W" $OVERSUB "$MPI_BENCH" --op "$op" "${COMMON[@]}" \
                >"$WORK/mpi-w$W-$op-r$round.json" || die "mpirun -n $W mpi_bench failed"
        done
    done
done
if [[ -n "${RESULTS_DIR:-}" ]]; then cp "$WORK"/*.json "$RESULTS_DIR"/; fi

python3 - "$WORK" "$FVD_TRANSPORT" "$WORLD_SIZES" "$OPS" "$CORES" "$STRICT" "$ROUNDS" <<'PY'
import json, os, statistics, sys

work, transport, worlds, ops, cores, strict, rounds = sys.argv[1:]
ops = ["all_to_all" if o == "all_to_all_4d" else o for o in ops.split()]
rounds = int(rounds)
KB, MB = 1 << 10, 1 << 20

def size(n):
    for unit, s in (("G", 1 << 30), ("M", MB), ("K", KB)):
        if n >= s and n % s == 0:
            return f"{n // s}{unit}"
    return str(n)

def time_text(us):
    return f"{us:.2f}" if us < 10 else f"{us:.1f}"

def target(op, inb):
    """The row's target ratio (MPI time / fvd time) from shared/PERFORMANCE.md, or None."""
    if transport == "mpi":
        return 0.9 if inb >= 64 * KB else None
    if inb <= 32 * KB:
        return 1.5 if transport == "inprocess" else 1.0
    if op == "all_reduce":
        return 2.0
    return 1.2 if inb <= 4 * MB else 1.0

def rows_by_round(side, w, op, key="out_of_place"):
    """{input_bytes: [time_us of each round]} for one side (fvd: the form `key`, if measured)."""
    out = {}
    for r in range(1, rounds + 1):
        doc = json.load(open(os.path.join(work, f"{side}-w{w}-{op}-r{r}.json")))
        for row in doc["rows"]:
            timing = row.get(key) if side == "fvd" else row
            if timing:
                out.setdefault(row["input_bytes"], []).append(timing["time_us"])
        if side == "mpi":
            rows_by_round.library = doc.get("library", "MPI")
    return out

rows_by_round.library = "MPI"
misses = rows_total = 0
print(f"# fvd bench --transport {transport} vs MPI, side by side in {rounds} alternating round(s), "
      f"median of the rounds' medians; 'fvd us': the form returning a new tensor, 'into us': the form writing "
      f"the caller's tensor; GB/s = input bytes per rank / time; ratio = MPI time / fvd time (> 1: fvd faster), "
      f"with fvd's caller-tensor form where it has one (MPI writes into preallocated buffers)")
print(f"# targets (shared/PERFORMANCE.md): "
      + ("<= 32 KB >= 1.5x (in-process), " if transport == "inprocess" else "")
      + ("never below 0.9x from 64 KB" if transport == "mpi" else
         "<= 32 KB >= 1.0x, 64 KB-4 MB >= 1.2x, 16-64 MB >= 1.0x, all_reduce from 64 KB >= 2.0x")
      + f"; host: {cores} cores, load {os.getloadavg()[0]:.2f}")
for w in worlds.split():
    lines = []
    for op in ops:
        fvd, mpi = rows_by_round("fvd", w, op), rows_by_round("mpi", w, op)
        into = rows_by_round("fvd", w, op, "in_place")
        for inb in sorted(fvd):
            allocating = statistics.median(fvd[inb])
            ft = statistics.median(into[inb]) if inb in into else allocating
            into_text = time_text(ft) if inb in into else "-"
            fg = inb / ft / 1e3 if inb else 0
            # Same op and size; a size the two round differently (all-to-all at odd W) takes the nearest.
            near = min(mpi, key=lambda b: abs(b - inb), default=None)
            if near is None or (inb and not 0.67 < near / inb < 1.5) or (inb == 0) != (near == 0):
                lines.append((op, size(inb), time_text(allocating), into_text, "-", f"{fg:.2f}", "-", "-", "-", "(no MPI row)"))
                continue
            mt = statistics.median(mpi[near])
            mg = near / mt / 1e3 if near else 0
            ratio = (mt / ft) * (inb / near if near else 1)  # per byte when the sizes differ a little
            goal = target(op, inb)
            ok = goal is None or ratio >= goal
            if goal is not None:
                rows_total += 1
                misses += not ok
            lines.append((op, size(inb), time_text(allocating), into_text, time_text(mt), f"{fg:.2f}", f"{mg:.2f}",
                          f"{ratio:.2f}x", "-" if goal is None else f">={goal:.1f}x",
                          "" if goal is None else "ok" if ok else "MISS"))
    head = ("op", "size/rank", "fvd us", "into us", "MPI us", "fvd GB/s", "MPI GB/s", "ratio", "target", "")
    widths = [max(len(str(x[i])) for x in [head] + lines) for i in range(len(head))]
    print(f"\n## world size {w}: fvd ({transport}) vs {rows_by_round.library}")
    for i, line in enumerate([head] + lines):
        print("  ".join(str(c).ljust(widths[k]) if k < 2 else str(c).rjust(widths[k])
                        for k, c in enumerate(line)).rstrip())
        if i == 0:
            print("  ".join("-" * x for x in widths[:-1]))
print(f"\n# {rows_total - misses} of {rows_total} rows meet their target")
sys.exit(1 if strict == "1" and misses else 0)
PY
