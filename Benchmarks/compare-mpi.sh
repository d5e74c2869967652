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
#   mpi:       from 64 KB >= 1.0x (never slower than the same MPI's own collective), but
#              between hosts all_reduce >= 0.9x from 1 MB (and not below); reported only below
#              64 KB. On one host (HOSTS=1) fvd's MPI transport is also run beside its own
#              shared-memory transport: "vs shm" = shm time / mpi time, target >= 0.9
#              (within 10 %).
# For all_to_all, FastVideo's own way over the same MPI (Benchmarks/peers/mpi_a2a4d_fastvideo.c:
# transpose-pack, MPI_Alltoall) runs in the same rounds: "vs FastVideo" = its time / fvd's,
# target >= 1.2x from 1 MB.
#
# HOSTS=2 runs the job on two simulated hosts (Tests/mpi/hosts.sh: network namespaces with
# their own hostnames, one rank per host, TCP between them; needs root) instead of this one:
# then FVD_TRANSPORT must be mpi and WORLD_SIZES is 2. Ranks yield while they wait there
# (mpi_yield_when_idle), or the kernel's softirq thread that carries the packets starves.
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
#   HOSTS           1 (this host) or 2 (two simulated hosts, see above) [1]
#   RESULTS_DIR     if set, the raw JSON of every run is kept there, the tables in
#                   RESULTS_DIR/compare.txt, every side's rows in fvd bench's schema
#                   (fvd-bench/1) in SIDE-wW.json, and a picture per world size and op
#                   (fvd plot) in compare-wW-OP.svg
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
HOSTS=${HOSTS:-1}
if [[ $HOSTS == 2 ]]; then
    [[ $FVD_TRANSPORT == mpi ]] || { echo "compare-mpi.sh: HOSTS=2 needs FVD_TRANSPORT=mpi" >&2; exit 1; }
    WORLD_SIZES=2
elif [[ $HOSTS != 1 ]]; then
    echo "compare-mpi.sh: HOSTS is 1 or 2" >&2
    exit 1
fi

die() { echo "compare-mpi.sh: $*" >&2; exit 1; }

for tool in mpicc mpirun; do
    command -v "$tool" >/dev/null 2>&1 ||
        die "'$tool' not found: install Open MPI first (Debian/Ubuntu: apt-get install -y libopenmpi-dev openmpi-bin)"
done
command -v python3 >/dev/null 2>&1 || die "python3 is needed to read the JSON results"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/compare-mpi.XXXXXX")
if [[ $HOSTS == 2 ]]; then
    # shellcheck source=../Tests/mpi/hosts.sh
    source "$ROOT/Tests/mpi/hosts.sh"
    hosts_up || die "HOSTS=2: $hosts_why"
    HOSTS_SLOTS=1
    trap 'rm -rf "$WORK"; hosts_down' EXIT
else
    trap 'rm -rf "$WORK"' EXIT
fi
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

echo "== building mpi_bench and mpi_a2a4d_fastvideo (mpicc -O2)" >&2
MPI_BENCH="$WORK/mpi_bench" FASTVIDEO_BENCH="$WORK/mpi_a2a4d_fastvideo"
mpicc -O2 -Wall -Wextra -o "$MPI_BENCH" "$ROOT/Benchmarks/peers/mpi_bench.c" || die "mpicc failed"
mpicc -O2 -Wall -Wextra -o "$FASTVIDEO_BENCH" "$ROOT/Benchmarks/peers/mpi_a2a4d_fastvideo.c" || die "mpicc failed"

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
            if [[ $HOSTS == 2 ]]; then
                LAUNCH=(hosts_mpirun "$W")
            else
                LAUNCH=("${MPIRUN[@]}" -n "$W" $OVERSUB)
            fi
            FVD_LAUNCH=()
            if [[ $FVD_TRANSPORT == mpi ]]; then FVD_LAUNCH=("${LAUNCH[@]}"); fi
            "${FVD_LAUNCH[@]}" "$FVD" bench --transport "$FVD_TRANSPORT" --world-size "$W" --op "$fvd_op" "${COMMON[@]}" \
                --json "$WORK/fvd-w$W-$op-r$round.json" >"$WORK/fvd.txt" 2>&1 || {
                cat "$WORK/fvd.txt" >&2
                die "fvd bench --transport $FVD_TRANSPORT failed"
            }
            "${LAUNCH[@]}" "$MPI_BENCH" --op "$op" --output-sizes "${COMMON[@]}" \
                >"$WORK/mpi-w$W-$op-r$round.json" || die "mpirun -n $W mpi_bench failed"
            if [[ $op == all_to_all ]]; then
                "${LAUNCH[@]}" "$FASTVIDEO_BENCH" --op "$op" "${COMMON[@]}" \
                    >"$WORK/fastvideo-w$W-$op-r$round.json" || die "mpirun -n $W mpi_a2a4d_fastvideo failed"
            fi
            if [[ $FVD_TRANSPORT == mpi && $HOSTS == 1 ]]; then
                # (FVD_TRANSPORT=mpi in the environment would make the ranks look for mpirun.)
                env -u FVD_TRANSPORT "$FVD" bench --transport shm --world-size "$W" --op "$fvd_op" "${COMMON[@]}" \
                    --json "$WORK/shm-w$W-$op-r$round.json" >"$WORK/fvd.txt" 2>&1 || {
                    cat "$WORK/fvd.txt" >&2
                    die "fvd bench --transport shm failed"
                }
            fi
        done
    done
done
if [[ -n "${RESULTS_DIR:-}" ]]; then
    cp "$WORK"/*.json "$RESULTS_DIR"/
    # Every side's runs in fvd bench's JSON schema (fvd-bench/1), the median round of each
    # size: RESULTS_DIR/{fvd,mpi,fastvideo,shm}-wW.json; then one picture per world size and
    # op (fvd plot, in-place forms where fvd has them, as MPI writes into preallocated
    # buffers): RESULTS_DIR/compare-wW-OP.svg.
    python3 - "$WORK" "$RESULTS_DIR" "$WORLD_SIZES" "$OPS" "$ROUNDS" "$FVD_TRANSPORT" <<'PY'
import json, os, sys

work, results, worlds, ops, rounds, transport = sys.argv[1:]
ops = ["all_to_all" if o == "all_to_all_4d" else o for o in ops.split()]
FVD_OP = {"all_to_all": "all_to_all_4d"}
BUS = {"all_reduce": lambda n: 2 * (n - 1) / n, "broadcast": lambda n: 1, "sendrecv": lambda n: 1, "barrier": lambda n: 0}

def median_row(rows, key):
    rows = sorted((r for r in rows if r.get(key)), key=lambda r: r[key]["time_us"])
    return rows[(len(rows) - 1) // 2][key] if rows else None

for w in map(int, worlds.split()):
    for side in ("fvd", "mpi", "fastvideo", "shm"):
        docs, library = [], None
        for op in ops:
            for r in range(1, int(rounds) + 1):
                path = os.path.join(work, f"{side}-w{w}-{op}-r{r}.json")
                if os.path.exists(path):
                    docs.append(json.load(open(path)))
        if not docs:
            continue
        by_size = {}
        for doc in docs:
            library = doc.get("library", library)
            for row in doc["rows"]:
                if side in ("mpi", "fastvideo"):
                    # mpi-bench/1 rows: one timing at the top level; busbw as nccl-tests has it.
                    op = FVD_OP.get(row["op"], row["op"])
                    factor = BUS.get(op, lambda n: (n - 1) / n)(w)
                    timing = {k: row[k] for k in ("time_us", "time_us_min", "time_us_max", "algbw_gbps")}
                    timing.update(busbw_gbps=row["algbw_gbps"] * factor, percent_of_copy_model=0)
                    row = {"op": op, "count": row["count"], "dtype": row["dtype"], "size_bytes": row["size_bytes"],
                           "input_bytes": row["input_bytes"], "out_of_place": timing, "copy_model_bytes": 0, "memcpy_gbps": 0}
                by_size.setdefault((row["op"], row["input_bytes"]), []).append(row)
        rows = []
        for (op, size), group in sorted(by_size.items()):
            row = dict(group[0])
            row["out_of_place"] = median_row(group, "out_of_place")
            if median_row(group, "in_place"):
                row["in_place"] = median_row(group, "in_place")
            rows.append(row)
        busbw = [row[k]["busbw_gbps"] for row in rows for k in ("out_of_place", "in_place") if row.get(k)]
        name = {"fvd": transport, "shm": "shm"}.get(side, library or "MPI")
        doc = {"schema": "fvd-bench/1", "transport": name, "world_size": w, "dtype": docs[0]["dtype"],
               "warmup": docs[0]["warmup"], "iterations": docs[0]["iterations"], "rounds": int(rounds), "rows": rows,
               "avg_busbw_gbps": sum(busbw) / len(busbw) if busbw else 0}
        with open(os.path.join(results, f"{side}-w{w}.json"), "w") as f:
            json.dump(doc, f, indent=1)
PY
    for W in $WORLD_SIZES; do
        for op in $OPS; do
            fvd_op=$op
            if [[ $op == all_to_all ]]; then fvd_op=all_to_all_4d; fi
            runs=("$RESULTS_DIR/fvd-w$W.json" "$RESULTS_DIR/mpi-w$W.json")
            if [[ $fvd_op == all_to_all_4d && -f $RESULTS_DIR/fastvideo-w$W.json ]]; then runs+=("$RESULTS_DIR/fastvideo-w$W.json"); fi
            if [[ -f $RESULTS_DIR/shm-w$W.json ]]; then runs+=("$RESULTS_DIR/shm-w$W.json"); fi
            "$FVD" plot "${runs[@]}" --op "$fvd_op" --in-place -o "$RESULTS_DIR/compare-w$W-$fvd_op.svg" >&2 ||
                die "fvd plot failed"
        done
    done
fi

TABLES=/dev/null
if [[ -n "${RESULTS_DIR:-}" ]]; then TABLES=$RESULTS_DIR/compare.txt; fi
python3 - "$WORK" "$FVD_TRANSPORT" "$WORLD_SIZES" "$OPS" "$CORES" "$STRICT" "$ROUNDS" "$HOSTS" <<'PY' | tee "$TABLES"
import json, os, statistics, sys

work, transport, worlds, ops, cores, strict, rounds, hosts = sys.argv[1:]
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
        if hosts == "2" and op == "all_reduce":
            return 0.9 if inb >= MB else None
        return 1.0 if inb >= 64 * KB else None
    if inb <= 32 * KB:
        return 1.5 if transport == "inprocess" else 1.0
    if op == "all_reduce":
        return 2.0
    return 1.2 if inb <= 4 * MB else 1.0

def rows_by_round(side, w, op, key="out_of_place"):
    """{input_bytes: [time_us of each round]} for one side (fvd's runs: the form `key`, if measured);
    empty when that side did not run."""
    out = {}
    for r in range(1, rounds + 1):
        path = os.path.join(work, f"{side}-w{w}-{op}-r{r}.json")
        if not os.path.exists(path):
            return {}
        doc = json.load(open(path))
        for row in doc["rows"]:
            timing = row.get(key) if side in ("fvd", "shm") else row
            if timing:
                out.setdefault(row["input_bytes"], []).append(timing["time_us"])
        if side == "mpi":
            rows_by_round.library = doc.get("library", "MPI")
    return out

def nearest(rows, inb):
    """The other side's row for the same size (sizes the two round differently, as the all-to-all
    at odd W, take the nearest): (its input bytes, median time), or None."""
    near = min(rows, key=lambda b: abs(b - inb), default=None)
    if near is None or (inb and not 0.67 < near / inb < 1.5) or (inb == 0) != (near == 0):
        return None
    return near, statistics.median(rows[near])

rows_by_round.library = "MPI"
misses = rows_total = 0
where = "on two simulated hosts, one rank each, TCP between them" if hosts == "2" else "on this host"
print(f"# fvd bench --transport {transport} vs MPI {where}, side by side in {rounds} alternating round(s), "
      f"median of the rounds' medians; 'fvd us': the form returning a new tensor, 'into us': the form writing "
      f"the caller's tensor; GB/s = input bytes per rank / time; ratio = MPI time / fvd time (> 1: fvd faster), "
      f"with fvd's caller-tensor form where it has one (MPI writes into preallocated buffers); "
      f"'vs FastVideo' = FastVideo's all_to_all_4D over the same MPI / fvd; 'vs shm' = fvd --transport shm / this run")
print(f"# targets (shared/PERFORMANCE.md): "
      + ("<= 32 KB >= 1.5x (in-process), " if transport == "inprocess" else "")
      + ("from 64 KB >= 1.0x" + (", all_reduce from 1 MB >= 0.9x" if hosts == "2" else ", vs shm >= 0.9")
         + ", vs FastVideo from 1 MB >= 1.2x" if transport == "mpi" else
         "<= 32 KB >= 1.0x, 64 KB-4 MB >= 1.2x, 16-64 MB >= 1.0x, all_reduce from 64 KB >= 2.0x")
      + f"; host: {cores} cores, load {os.getloadavg()[0]:.2f}")

def judge(ratio, goal):
    """Counts the row against its target; the text for the table."""
    global misses, rows_total
    if goal is None:
        return "-"
    rows_total += 1
    misses += ratio < goal
    return f"{ratio:.2f}x " + ("ok" if ratio >= goal else "MISS")

for w in worlds.split():
    lines = []
    for op in ops:
        fvd, mpi = rows_by_round("fvd", w, op), rows_by_round("mpi", w, op)
        into = rows_by_round("fvd", w, op, "in_place")
        fastvideo, shm = rows_by_round("fastvideo", w, op), rows_by_round("shm", w, op, "in_place")
        shm_out = rows_by_round("shm", w, op)
        for inb in sorted(fvd):
            allocating = statistics.median(fvd[inb])
            ft = statistics.median(into[inb]) if inb in into else allocating
            fg = inb / ft / 1e3 if inb else 0
            line = {"op": op, "size/rank": size(inb), "fvd us": time_text(allocating),
                    "into us": time_text(ft) if inb in into else "-", "fvd GB/s": f"{fg:.2f}"}
            other = nearest(mpi, inb)
            if other is None:
                line["target"] = "(no MPI row)"
            else:
                near, mt = other
                ratio = (mt / ft) * (inb / near if near else 1)  # per byte when the sizes differ a little
                goal = target(op, inb)
                line.update({"MPI us": time_text(mt), "MPI GB/s": f"{near / mt / 1e3 if near else 0:.2f}",
                             "ratio": f"{ratio:.2f}x", "target": "-" if goal is None else f">={goal:.1f}x",
                             "": "" if goal is None else "ok" if ratio >= goal else "MISS"})
                if goal is not None:
                    rows_total += 1
                    misses += ratio < goal
            if fastvideo and (other := nearest(fastvideo, inb)):
                near, vt = other
                ratio = (vt / ft) * (inb / near if near else 1)
                line["FastVideo us"] = time_text(vt)
                line["vs FastVideo"] = judge(ratio, 1.2 if inb >= MB else None) if inb >= MB else f"{ratio:.2f}x"
            if shm and inb in shm:
                st = statistics.median(shm[inb] if inb in shm else shm_out[inb])
                line["shm us"] = time_text(st)
                line["vs shm"] = judge(st / ft, 0.9 if inb >= 64 * KB else None) if inb >= 64 * KB else f"{st / ft:.2f}x"
            lines.append(line)
    head = ["op", "size/rank", "fvd us", "into us", "MPI us", "fvd GB/s", "MPI GB/s", "ratio", "target", ""]
    for extra in ("FastVideo us", "vs FastVideo", "shm us", "vs shm"):
        if any(extra in line for line in lines):
            head.append(extra)
    table = [head] + [[line.get(c, "-" if c else "") for c in head] for line in lines]
    widths = [max(len(str(x[i])) for x in table) for i in range(len(head))]
    print(f"\n## world size {w}: fvd ({transport}) vs {rows_by_round.library}")
    for i, line in enumerate(table):
        print("  ".join(str(c).ljust(widths[k]) if k < 2 else str(c).rjust(widths[k])
                        for k, c in enumerate(line)).rstrip())
        if i == 0:
            print("  ".join("-" * x for x in widths))
print(f"\n# {rows_total - misses} of {rows_total} checks meet their target")
sys.exit(1 if strict == "1" and misses else 0)
PY
