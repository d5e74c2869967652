# Two simulated hosts on this machine, for Tests/mpi/multihost.sh and
# Benchmarks/compare-mpi.sh (source it; needs root):
#   - network namespaces fvd-h0-PID and fvd-h1-PID joined by a veth pair
#     (10.77.0.1 <-> 10.77.0.2), so traffic stays inside them;
#   - each with its own UTS namespace and hostname, so MPI's MPI_Comm_split_type (fvd's and
#     Open MPI's own shared memory, vader) sees two hosts rather than one;
#   - `hosts_mpirun N [MPIRUN ARGS…] PROGRAM ARGS…` runs mpirun on host 0 with N ranks over
#     both hosts (--map-by slot; HOSTS_SLOTS ranks per host, default 2). It reaches host 1
#     through a plm_rsh_agent that runs the command with `ip netns exec` instead of ssh.
#     HOSTS_BTL picks Open MPI's transports: "tcp,self" (default) or "tcp,vader,self".
#     The variables named in HOSTS_PASS are passed to the ranks when set. Waiting ranks
#     yield the CPU (mpi_yield_when_idle): packets between namespaces are delivered by the
#     kernel's softirq thread, which ranks spinning on both cores would starve until the
#     scheduler's tick (every message then takes 8-16 ms, whatever its size).
# `hosts_up` makes them and arranges their removal at exit; it returns 1, with the reason in
# $hosts_why, when the sandbox forbids namespaces.

hosts_h0=fvd-h0-$$ hosts_h1=fvd-h1-$$
hosts_dir=$(mktemp -d)
hosts_why=
HOSTS_SLOTS=${HOSTS_SLOTS:-2}
HOSTS_BTL=${HOSTS_BTL:-tcp,self}
HOSTS_PASS=${HOSTS_PASS:-}

hosts_down() {
    ip netns del "$hosts_h0" 2>/dev/null || true
    ip netns del "$hosts_h1" 2>/dev/null || true
    rm -rf "$hosts_dir"
}

hosts_up() {
    trap hosts_down EXIT
    trap 'exit 130' INT TERM HUP
    if ! ip netns add "$hosts_h0" 2>"$hosts_dir/why"; then
        hosts_why="cannot create network namespaces ($(cat "$hosts_dir/why")); needs root and CAP_SYS_ADMIN"
        return 1
    fi
    ip netns add "$hosts_h1"
    ip link add "veth-$$-0" netns "$hosts_h0" type veth peer name "veth-$$-1" netns "$hosts_h1"
    ip -n "$hosts_h0" addr add 10.77.0.1/24 dev "veth-$$-0"
    ip -n "$hosts_h1" addr add 10.77.0.2/24 dev "veth-$$-1"
    for ns in "$hosts_h0" "$hosts_h1"; do ip -n "$ns" link set lo up; done
    ip -n "$hosts_h0" link set "veth-$$-0" up
    ip -n "$hosts_h1" link set "veth-$$-1" up
    # ssh's stand-in: `agent HOST COMMAND…` runs COMMAND in HOST's namespaces.
    cat >"$hosts_dir/agent" <<AGENT
#!/usr/bin/env bash
host=\$1; shift
case "\$host" in
    10.77.0.1) ns=$hosts_h0 ;;
    10.77.0.2) ns=$hosts_h1 ;;
    *) echo "agent: unknown host \$host" >&2; exit 1 ;;
esac
exec ip netns exec "\$ns" unshare --uts /bin/sh -c "hostname \$ns; \$*"
AGENT
    chmod +x "$hosts_dir/agent"
}

hosts_mpirun() {
    local n=$1
    shift
    printf '10.77.0.1 slots=%s\n10.77.0.2 slots=%s\n' "$HOSTS_SLOTS" "$HOSTS_SLOTS" >"$hosts_dir/hostfile"
    local pass=(-x PATH) variable
    for variable in $HOSTS_PASS; do
        if [ -n "${!variable:-}" ]; then pass+=(-x "$variable"); fi
    done
    # mpirun itself runs on host 0: in its namespaces, with its own hostname like the agent's.
    ip netns exec "$hosts_h0" unshare --uts env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
        sh -c 'hostname "$0"; exec "$@"' "$hosts_h0" \
        timeout 300 mpirun -n "$n" --hostfile "$hosts_dir/hostfile" --map-by slot \
        --mca plm_rsh_agent "$hosts_dir/agent" --mca plm_rsh_no_tree_spawn 1 \
        --mca btl "$HOSTS_BTL" --mca btl_vader_single_copy_mechanism none --mca mpi_yield_when_idle 1 \
        --mca btl_tcp_if_include 10.77.0.0/24 --mca oob_tcp_if_include 10.77.0.0/24 \
        "${pass[@]}" "$@"
}
