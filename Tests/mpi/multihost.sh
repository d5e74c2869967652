#!/usr/bin/env bash
# Two simulated hosts on this machine: network namespaces fvd-h0 and fvd-h1 joined by a
# veth pair (10.77.0.1 <-> 10.77.0.2). mpirun runs in fvd-h0 and starts 2 ranks on each
# "host" over Open MPI's TCP transport only (--mca btl tcp,self); it reaches fvd-h1
# through a plm_rsh_agent that runs the command with `ip netns exec` instead of ssh.
# The ranks check every collective against the in-process transport bitwise (fvd
# selftest) and run the demo. Traffic stays inside the namespaces; they are removed on
# every exit path. Exits 0 with a "skipped:" line when the sandbox forbids namespaces.
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
exec ip netns exec "\$ns" /bin/sh -c "\$*"
AGENT
chmod +x "$work/agent"
printf '10.77.0.1 slots=2\n10.77.0.2 slots=2\n' >"$work/hosts"

run() {
    ip netns exec "$h0" env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
        timeout 300 mpirun -n 4 --hostfile "$work/hosts" --map-by slot \
        --mca plm_rsh_agent "$work/agent" --mca plm_rsh_no_tree_spawn 1 \
        --mca btl tcp,self --mca btl_tcp_if_include 10.77.0.0/24 --mca oob_tcp_if_include 10.77.0.0/24 \
        -x PATH \
        "$@"
}

echo "== hosts: rank -> namespace"
run /bin/sh -c 'echo "rank $OMPI_COMM_WORLD_RANK on $(ip -o -4 addr show | grep -o "10.77.0.[12]")"' | sort
echo "== fvd selftest over TCP between the two hosts"
run "$fvd" selftest | sort | tee "$work/selftest"
[ "$(grep -c "results equal the in-process transport" "$work/selftest")" = 4 ] || { echo "multihost: selftest failed" >&2; exit 1; }
echo "== fvd demo --transport mpi"
run "$fvd" demo --transport mpi --world-size 4 | tee "$work/demo"
grep -q "^PASS$" "$work/demo" || { echo "multihost: demo failed" >&2; exit 1; }
echo "multihost: PASS (4 ranks on 2 namespaces, TCP only)"
