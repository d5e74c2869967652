#!/usr/bin/env bash
# Two simulated hosts on this machine: network namespaces fvd-h0 and fvd-h1 joined by a
# veth pair (10.77.0.1 <-> 10.77.0.2). mpirun runs in fvd-h0 and starts 2 ranks on each
# "host"; it reaches fvd-h1 through a plm_rsh_agent that runs the command with
# `ip netns exec` instead of ssh. Each namespace also gets its own UTS namespace and
# hostname, so MPI (and fvd's MPI_Comm_split_type) sees two hosts: fvd's ranks share
# memory inside a host and send MPI messages between hosts. The ranks check every
# collective against the in-process transport bitwise (fvd selftest): with every group
# over messages (FVD_MPI_SHARED_MEMORY=0), then split by host, over Open MPI's TCP only
# and with its shared memory inside a host; then the demo, and the failure cells (kill,
# throw, shape mismatch, timeout), each of which must end the job and leave nothing in
# /dev/shm. Traffic stays inside the namespaces; they are removed on every exit path. Exits 0 with a "skipped:" line when the sandbox forbids namespaces.
#
# Usage: Tests/mpi/multihost.sh [path/to/fvd]   (default: .build-mpi/debug/fvd, built
# with `swift build --traits MPI --scratch-path .build-mpi`). Needs root.
set -euo pipefail
cd "$(dirname "$0")/../.."
fvd=$(realpath "${1:-.build-mpi/debug/fvd}")
[ -x "$fvd" ] || { echo "multihost: $fvd not found; build with: swift build --traits MPI --scratch-path .build-mpi" >&2; exit 1; }
command -v mpirun >/dev/null || { echo "multihost: mpirun not found (apt-get install openmpi-bin)" >&2; exit 1; }

h0=fvd-h0-$$ h1=fvd-h1-$$
work=$(mktemp -d)
cleanup() {
    ip netns del "$h0" 2>/dev/null || true
    ip netns del "$h1" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

if ! ip netns add "$h0" 2>"$work/why"; then
    echo "multihost: skipped: cannot create network namespaces ($(cat "$work/why")); needs root and CAP_SYS_ADMIN"
    exit 0
fi
ip netns add "$h1"
ip link add "veth-$$-0" netns "$h0" type veth peer name "veth-$$-1" netns "$h1"
ip -n "$h0" addr add 10.77.0.1/24 dev "veth-$$-0"
ip -n "$h1" addr add 10.77.0.2/24 dev "veth-$$-1"
for ns in "$h0" "$h1"; do
    ip -n "$ns" link set lo up
done
ip -n "$h0" link set "veth-$$-0" up
ip -n "$h1" link set "veth-$$-1" up

# ssh's stand-in: `agent HOST COMMAND…` runs COMMAND in HOST's namespace.
cat >"$work/agent" <<AGENT
#!/usr/bin/env bash
host=\$1; shift
case "\$host" in
    10.77.0.1) ns=$h0 ;;
    10.77.0.2) ns=$h1 ;;
    *) echo "agent: unknown host \$host" >&2; exit 1 ;;
esac
exec ip netns exec "\$ns" unshare --uts /bin/sh -c "hostname \$ns; \$*"
AGENT
chmod +x "$work/agent"
printf '10.77.0.1 slots=2\n10.77.0.2 slots=2\n' >"$work/hosts"

# mpirun itself runs on "host" 0: in its namespace, with its own hostname like the agent's.
# MPI_ARGS picks Open MPI's transports: TCP only, or (the default of a real cluster) its
# shared memory (vader) inside a host and TCP between hosts.
tcp_only=(--mca btl tcp,self)
with_vader=(--mca btl tcp,vader,self --mca btl_vader_single_copy_mechanism none)
MPI_ARGS=("${tcp_only[@]}")
run() {
    local pass=(-x PATH)
    for variable in FVD_MPI_SHARED_MEMORY FVD_LOG_LEVEL; do
        if [ -n "${!variable:-}" ]; then pass+=(-x "$variable"); fi
    done
    ip netns exec "$h0" unshare --uts env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
        sh -c 'hostname "$0"; exec "$@"' "$h0" \
        timeout 120 mpirun -n 4 --hostfile "$work/hosts" --map-by slot \
        --mca plm_rsh_agent "$work/agent" --mca plm_rsh_no_tree_spawn 1 \
        "${MPI_ARGS[@]}" --mca btl_tcp_if_include 10.77.0.0/24 --mca oob_tcp_if_include 10.77.0.0/24 \
        "${pass[@]}" "$@"
}

# Nothing of fvd's may outlive a job: no shared-memory object, no process.
check_clean() {
    sleep 0.2
    if ls /dev/shm | grep -q '^fvd-mpi-'; then echo "multihost: $1 left $(ls /dev/shm | grep '^fvd-mpi-')" >&2; exit 1; fi
    if pgrep -f "$fvd" >/dev/null; then echo "multihost: $1 left processes: $(pgrep -af "$fvd")" >&2; exit 1; fi
}

echo "== hosts: rank -> namespace"
run /bin/sh -c 'echo "rank $OMPI_COMM_WORLD_RANK on $(hostname) $(ip -o -4 addr show | grep -o "10.77.0.[12]")"' | sort

echo "== fvd selftest, every group over MPI messages (TCP only, FVD_MPI_SHARED_MEMORY=0)"
FVD_MPI_SHARED_MEMORY=0 run "$fvd" selftest | sort | tee "$work/selftest"
[ "$(grep -c "results equal the in-process transport" "$work/selftest")" = 4 ] || { echo "multihost: selftest failed" >&2; exit 1; }
check_clean "selftest over messages"

for mode in tcp_only with_vader; do
    if [ $mode = tcp_only ]; then MPI_ARGS=("${tcp_only[@]}"); else MPI_ARGS=("${with_vader[@]}"); fi
    echo "== fvd selftest, 2 hosts x 2 ranks sharing memory inside each host ($mode)"
    FVD_LOG_LEVEL=debug run "$fvd" selftest >"$work/selftest" 2>"$work/log" || { cat "$work/log" >&2; exit 1; }
    sort "$work/selftest"
    [ "$(grep -c "results equal the in-process transport" "$work/selftest")" = 4 ] || { echo "multihost: selftest failed" >&2; exit 1; }
    for pair in "0, 1" "2, 3"; do
        [ "$(grep -c "MPI: world ranks $pair share this host" "$work/log")" = 2 ] ||
            { grep "MPI:" "$work/log" >&2; echo "multihost: ranks $pair did not share a host's memory" >&2; exit 1; }
    done
    check_clean "selftest ($mode)"
done

echo "== fvd demo --transport mpi"
run "$fvd" demo --transport mpi --world-size 4 | tee "$work/demo"
grep -q "^PASS$" "$work/demo" || { echo "multihost: demo failed" >&2; exit 1; }
check_clean "demo"

# Failure cells on the mixed job: each ends the job with an error that names the cause,
# well within the default 300 s timeout, and leaves nothing behind on either host.
cell() {
    local name=$1 expect=$2; shift 2
    local started=$SECONDS
    if run "$fvd" selftest "$@" >"$work/out" 2>"$work/err"; then
        echo "multihost: $name: the job succeeded" >&2; exit 1
    fi
    if [ $((SECONDS - started)) -ge 60 ]; then echo "multihost: $name took $((SECONDS - started)) s" >&2; exit 1; fi
    if [ -n "$expect" ] && ! grep -q "$expect" "$work/err"; then
        cat "$work/err" >&2; echo "multihost: $name: no error names '$expect'" >&2; exit 1
    fi
    check_clean "$name"
    echo "$name: ended in $((SECONDS - started)) s; $(grep -m1 '^error: ' "$work/err" || echo 'killed by mpirun')"
}
echo "== failure cells, 2 hosts x 2 ranks"
cell "kill (rank 2, host 1)" "" --fault kill:rank=2:call=10
cell "throw (rank 2)" "injected failure on rank 2" --fault fail:rank=2:call=10
cell "throw (rank 1, host 0)" "injected failure on rank 1" --fault fail:rank=1:call=10
cell "shape mismatch (rank 2)" "ranks passed different shapes" --mismatch shape --mismatch-rank 2
cell "timeout (rank 3 late)" "timed out after 2 s waiting for rank 3" --fault delay=6:rank=3:call=4 --timeout 2
echo "multihost: PASS (4 ranks on 2 namespaces: messages only, then shared memory inside each host)"
