#!/usr/bin/env bash
# Four ranks on two simulated hosts (Tests/mpi/hosts.sh: network namespaces with their
# own hostnames, mpirun over an `ip netns exec` agent), 2 ranks per host. The ranks check
# every collective against the in-process transport bitwise (fvd selftest): first with
# every group over MPI messages (FVD_MPI_SHARED_MEMORY=0), then split by host (ranks of a
# host share memory, only bytes between hosts are messages) over Open MPI's TCP only and
# with its shared memory inside a host; then the demo, and the failure cells (kill,
# throw, shape mismatch, timeout), each of which must end the job and leave nothing in
# /dev/shm and no process. Exits 0 with a "skipped:" line when the sandbox forbids
# namespaces.
#
# Usage: Tests/mpi/multihost.sh [path/to/fvd]   (default: .build-mpi/debug/fvd, built
# with `swift build --traits MPI --scratch-path .build-mpi`). Needs root.
set -euo pipefail
cd "$(dirname "$0")/../.."
fvd=$(realpath "${1:-.build-mpi/debug/fvd}")
[ -x "$fvd" ] || { echo "multihost: $fvd not found; build with: swift build --traits MPI --scratch-path .build-mpi" >&2; exit 1; }
command -v mpirun >/dev/null || { echo "multihost: mpirun not found (apt-get install openmpi-bin)" >&2; exit 1; }

source Tests/mpi/hosts.sh
if ! hosts_up; then
    echo "multihost: skipped: $hosts_why"
    exit 0
fi
HOSTS_PASS="FVD_MPI_SHARED_MEMORY FVD_LOG_LEVEL"
run() { hosts_mpirun 4 "$@"; }

# Nothing of fvd's may outlive a job: no shared-memory object, no process.
check_clean() {
    sleep 0.2
    if ls /dev/shm | grep -q '^fvd-mpi-'; then echo "multihost: $1 left $(ls /dev/shm | grep '^fvd-mpi-')" >&2; exit 1; fi
    if pgrep -f "$fvd" >/dev/null; then echo "multihost: $1 left processes: $(pgrep -af "$fvd")" >&2; exit 1; fi
}

echo "== hosts: rank -> namespace"
run /bin/sh -c 'echo "rank $OMPI_COMM_WORLD_RANK on $(hostname) $(ip -o -4 addr show | grep -o "10.77.0.[12]")"' | sort

echo "== fvd selftest, every group over MPI messages (TCP only, FVD_MPI_SHARED_MEMORY=0)"
export FVD_MPI_SHARED_MEMORY=0
run "$fvd" selftest | sort | tee "$hosts_dir/selftest"
[ "$(grep -c "results equal the in-process transport" "$hosts_dir/selftest")" = 4 ] || { echo "multihost: selftest failed" >&2; exit 1; }
check_clean "selftest over messages"
unset FVD_MPI_SHARED_MEMORY

for HOSTS_BTL in tcp,self tcp,vader,self; do
    mode="Open MPI's btl $HOSTS_BTL"
    echo "== fvd selftest, 2 hosts x 2 ranks sharing memory inside each host ($mode)"
    FVD_LOG_LEVEL=debug run "$fvd" selftest >"$hosts_dir/selftest" 2>"$hosts_dir/log" || { cat "$hosts_dir/log" >&2; exit 1; }
    sort "$hosts_dir/selftest"
    [ "$(grep -c "results equal the in-process transport" "$hosts_dir/selftest")" = 4 ] || { echo "multihost: selftest failed" >&2; exit 1; }
    for pair in "0, 1" "2, 3"; do
        [ "$(grep -c "MPI: world ranks $pair share this host" "$hosts_dir/log")" = 2 ] ||
            { grep "MPI:" "$hosts_dir/log" >&2; echo "multihost: ranks $pair did not share a host's memory" >&2; exit 1; }
    done
    check_clean "selftest ($mode)"
done

echo "== fvd demo --transport mpi"
run "$fvd" demo --transport mpi --world-size 4 | tee "$hosts_dir/demo"
grep -q "^PASS$" "$hosts_dir/demo" || { echo "multihost: demo failed" >&2; exit 1; }
check_clean "demo"

# Failure cells on the mixed job: each ends the job with an error that names the cause,
# well within the default 300 s timeout, and leaves nothing behind on either host.
cell() {
    local name=$1 expect=$2; shift 2
    local started=$SECONDS
    if run "$fvd" selftest "$@" >"$hosts_dir/out" 2>"$hosts_dir/err"; then
        echo "multihost: $name: the job succeeded" >&2; exit 1
    fi
    if [ $((SECONDS - started)) -ge 60 ]; then echo "multihost: $name took $((SECONDS - started)) s" >&2; exit 1; fi
    if [ -n "$expect" ] && ! grep -q "$expect" "$hosts_dir/err"; then
        cat "$hosts_dir/err" >&2; echo "multihost: $name: no error names '$expect'" >&2; exit 1
    fi
    check_clean "$name"
    echo "$name: ended in $((SECONDS - started)) s; $(grep -m1 '^error: ' "$hosts_dir/err" || echo 'killed by mpirun')"
}
echo "== failure cells, 2 hosts x 2 ranks"
cell "kill (rank 2, host 1)" "" --fault kill:rank=2:call=10
cell "throw (rank 2)" "injected failure on rank 2" --fault fail:rank=2:call=10
cell "throw (rank 1, host 0)" "injected failure on rank 1" --fault fail:rank=1:call=10
cell "shape mismatch (rank 2)" "ranks passed different shapes" --mismatch shape --mismatch-rank 2
cell "timeout (rank 3 late)" "timed out after 2 s waiting for rank 3" --fault delay=6:rank=3:call=4 --timeout 2
echo "multihost: PASS (4 ranks on 2 namespaces: messages only, then shared memory inside each host)"
