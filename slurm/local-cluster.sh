#!/usr/bin/env bash
# A real one-node Slurm cluster on this machine, for development and the tests in tests/launch/,
# or (MMTC_SLURM_NODES) a two-node one whose nodes are network namespaces (tests/netns_hosts.py).
#
#   slurm/local-cluster.sh start|stop|status|env
#
# Everything (config, munge key and socket, state, spool, logs, pid files) lives under
# $MMTC_SLURM_DIR (default /tmp/mmtc-slurm), so it never touches /etc/slurm or a system munged.
# Client commands need the config:  eval "$(slurm/local-cluster.sh env)"   (sets SLURM_CONF).
#
# Settings (environment): MMTC_SLURM_DIR, MMTC_SLURM_PORT (slurmctld's port; slurmd uses the
# next one; default 6917), MMTC_SLURM_FIRST_JOB_ID (default 1), MMTC_SLURM_PARTITION (default
# cpu). Installs Debian's slurm-wlm and munge with apt when they are missing. Needs root; exits
# with status 3 without root (or apt), so that callers (the tests) can tell "cannot run here" from
# a failure.
#
# Two nodes: MMTC_SLURM_NODES="NAME1=ADDR1@NETNS1,NAME2=ADDR2@NETNS2" names each node, its address
# and the network namespace it lives in (made beforehand, e.g. by tests/netns_hosts.py, with
# /etc/netns/NETNS/hosts naming both). slurmctld and NAME1's slurmd run inside NETNS1, NAME2's
# slurmd inside NETNS2, each under its own host name (a UTS namespace); the controller is NAME1 at
# ADDR1, reachable only from inside the namespaces, so client commands must run there too:
#   ip netns exec NETNS1 env SLURM_CONF=... sinfo      (`status` and `stop` do that themselves)
# Each slurmd has its own spool dir, pid and log file (%n: the node name).
set -euo pipefail

DIR=${MMTC_SLURM_DIR:-/tmp/mmtc-slurm}
PORT=${MMTC_SLURM_PORT:-6917}
FIRST_JOB_ID=${MMTC_SLURM_FIRST_JOB_ID:-1}
PARTITION=${MMTC_SLURM_PARTITION:-cpu}
CONF=$DIR/etc/slurm.conf
MUNGE_SOCKET=$DIR/munge/munge.socket
NAMES=() ADDRS=() NETNS=()
if [ -n "${MMTC_SLURM_NODES:-}" ]; then
    IFS=, read -r -a specs <<<"$MMTC_SLURM_NODES"
    for spec in "${specs[@]}"; do
        if ! [[ $spec =~ ^([A-Za-z0-9_-]+)=([0-9.]+)@([A-Za-z0-9_.-]+)$ ]]; then
            echo "local-cluster: MMTC_SLURM_NODES: '$spec' is not NAME=ADDR@NETNS" >&2
            exit 2
        fi
        NAMES+=("${BASH_REMATCH[1]}") ADDRS+=("${BASH_REMATCH[2]}") NETNS+=("${BASH_REMATCH[3]}")
    done
fi

say() { echo "local-cluster: $*" >&2; }

multi() { [ "${#NAMES[@]}" -gt 0 ]; }

# Node I's network namespace with its host name (slurmctld insists on being SlurmctldHost) and
# /etc/netns/NETNS/hosts as /etc/hosts, in a mount namespace of its own. Not `ip netns exec`: that
# also mounts a fresh /sys without /sys/fs/cgroup, and slurmd then refuses to start ("No filesystem
# mounted on /sys/fs/cgroup", "Unable to initialize cgroup plugin"), cgroup.conf or not.
in_node() {
    local i=$1
    shift
    # shellcheck disable=SC2016  # $0, $1 and $@ are the inner shell's
    nsenter --net="/run/netns/${NETNS[$i]}" unshare --mount --uts --propagation private -- sh -c '
        if [ -f "/etc/netns/$1/hosts" ]; then mount --bind "/etc/netns/$1/hosts" /etc/hosts || exit; fi
        hostname "$0" && shift && exec "$@"' "${NAMES[$i]}" "${NETNS[$i]}" "$@"
}

# A client command where the controller is reachable: here, or inside the first node.
client() {
    if multi; then in_node 0 "$@"; else "$@"; fi
}

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null; then
        return 0
    fi
    if ! command -v apt-get >/dev/null; then
        say "slurm-wlm and munge are missing and there is no apt-get to install them; not started"
        exit 3
    fi
    export DEBIAN_FRONTEND=noninteractive
    # A fresh image has no package lists; apt-get install would find nothing.
    if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
        apt-get -o DPkg::Lock::Timeout=300 update -q
    fi
    say "installing slurm-wlm and munge"
    apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends slurm-wlm munge >/dev/null
}

# The node's Slurm name, which jobs see in SLURM_JOB_NODELIST and use as the rendezvous address:
# the host name when it resolves, else localhost (slurmd is told its name with -N either way).
node_name() {
    local host
    host=$(hostname -s)
    if [ -n "${MMTC_SLURM_NODENAME:-}" ]; then
        echo "$MMTC_SLURM_NODENAME"
    elif getent hosts "$host" >/dev/null; then
        echo "$host"
    else
        echo localhost
    fi
}

write_config() {
    local host node cpus mem header ctld spool slurmd_pid slurmd_log i
    host=$(hostname -s)
    node=$(node_name)
    # At least 2 CPUs, so that a 2-task test job fits even on a 1-core machine (config_overrides
    # below makes slurmd trust this count instead of draining the node for having fewer).
    cpus=$(getconf _NPROCESSORS_ONLN)
    [ "$cpus" -ge 2 ] || cpus=2
    # Slurm drains a node that has less memory than configured: stay under what it has.
    mem=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    mkdir -p "$DIR"/{etc,state,spool,log,run}
    header="# Written by slurm/local-cluster.sh; verified configuration (shared/notes/slurm-local.md)."
    ctld="$host(127.0.0.1)"
    spool=$DIR/spool slurmd_pid=$DIR/run/slurmd.pid slurmd_log=$DIR/log/slurmd.log
    if multi; then
        # Nodes in namespaces: the controller at the first node's address, and per node (%n, the
        # node name) a spool dir, pid file and log, as on separate machines.
        header="# Written by slurm/local-cluster.sh (MMTC_SLURM_NODES=$MMTC_SLURM_NODES): nodes in network namespaces."
        ctld="${NAMES[0]}(${ADDRS[0]})"
        spool=$DIR/spool/%n slurmd_pid=$DIR/run/slurmd-%n.pid slurmd_log=$DIR/log/slurmd-%n.log
        for i in "${!NAMES[@]}"; do mkdir -p "$DIR/spool/${NAMES[$i]}"; done
    fi
    {
        cat <<EOF
$header
ClusterName=mmtc-local
# The address: clients and slurmd reach the controller without a DNS lookup of the host name.
SlurmctldHost=$ctld
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire is also how long a requeued job waits before it may run again (default 120 s).
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$slurmd_pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$slurmd_log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
# The default 60 s main loop would leave a requeued job pending long after it may start.
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobRequeue=1
FirstJobId=$FIRST_JOB_ID
KillWait=15
MailProg=/bin/true
EOF
        if multi; then
            for i in "${!NAMES[@]}"; do
                echo "NodeName=${NAMES[$i]} NodeAddr=${ADDRS[$i]} CPUs=$cpus RealMemory=$mem State=UNKNOWN"
            done
            local IFS=,
            echo "PartitionName=$PARTITION Nodes=${NAMES[*]} Default=YES MaxTime=INFINITE State=UP"
        else
            echo "NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN"
            echo "PartitionName=$PARTITION Nodes=$node Default=YES MaxTime=INFINITE State=UP"
        fi
    } >"$CONF"
    # No cgroup.conf: Slurm 22.05 has no CgroupPlugin=disabled, and slurmd fails with it.
}

# A pid file names a live daemon only if that pid is still the same program (pids get reused):
# the file's name without .pid, or the program given.
alive() { [ -f "$1" ] && [ "$(cat "/proc/$(cat "$1")/comm" 2>/dev/null)" = "${2:-$(basename "$1" .pid)}" ]; }

start_munge() {
    alive "$DIR/munge/munged.pid" && return 0
    mkdir -p "$DIR/munge"
    chmod 700 "$DIR/munge"
    # Our own key and socket: a system munged (or another cluster's) is left alone.
    [ -f "$DIR/munge/munge.key" ] || mungekey --create --keyfile="$DIR/munge/munge.key"
    chmod 600 "$DIR/munge/munge.key"
    munged --force --socket="$MUNGE_SOCKET" --key-file="$DIR/munge/munge.key" \
        --pid-file="$DIR/munge/munged.pid" --seed-file="$DIR/munge/munged.seed" \
        --log-file="$DIR/log/munged.log"
}

wait_idle() {
    local want=1
    multi && want=${#NAMES[@]}
    for _ in $(seq 1 60); do
        if [ "$(client sinfo -h -N -o '%T' 2>/dev/null | grep -cx 'idle')" -ge "$want" ]; then
            return 0
        fi
        sleep 1
    done
    say "the nodes did not become idle within 60 s; see $DIR/log/"
    client sinfo -N -l >&2 || true
    return 1
}

cmd_start_multi() {
    local i
    if alive "$DIR/run/slurmctld.pid"; then
        say "already running ($CONF)"
        return 0
    fi
    write_config
    start_munge
    if ! in_node 0 slurmctld -f "$CONF"; then
        say "slurmctld did not start in ${NETNS[0]}; see $DIR/log/slurmctld.log"
        exit 1
    fi
    for i in "${!NAMES[@]}"; do
        alive "$DIR/run/slurmd-${NAMES[$i]}.pid" slurmd && continue
        if ! in_node "$i" slurmd -f "$CONF" -N "${NAMES[$i]}"; then
            say "slurmd ${NAMES[$i]} did not start in ${NETNS[$i]}; see $DIR/log/slurmd-${NAMES[$i]}.log"
            exit 1
        fi
    done
    wait_idle
    say "running: nodes ${NAMES[*]}; client commands inside ${NETNS[0]}: export SLURM_CONF=$CONF"
}

cmd_start() {
    # slurmd runs as root (SlurmUser=root), and installing the packages needs root too.
    if [ "$(id -u)" -ne 0 ]; then
        say "needs root (to install slurm-wlm and munge with apt and to run slurmd); not started"
        exit 3
    fi
    install_packages
    export SLURM_CONF=$CONF
    if multi; then
        cmd_start_multi
        return 0
    fi
    if alive "$DIR/run/slurmctld.pid" && alive "$DIR/run/slurmd.pid"; then
        say "already running ($CONF)"
        return 0
    fi
    write_config
    start_munge
    alive "$DIR/run/slurmctld.pid" || slurmctld -f "$CONF"
    alive "$DIR/run/slurmd.pid" || slurmd -f "$CONF" -N "$(node_name)"
    wait_idle
    say "running: export SLURM_CONF=$CONF"
}

stop_pid() {
    local file=$1 pid
    if ! alive "$file" "${2:-}"; then
        rm -f "$file"
        return 0
    fi
    pid=$(cat "$file")
    if kill "$pid" 2>/dev/null; then
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
    fi
    rm -f "$file"
}

cmd_stop() {
    # Jobs first (their tasks would outlive slurmd), then the daemons by pid, in reverse order.
    local file
    if alive "$DIR/run/slurmctld.pid"; then
        export SLURM_CONF=$CONF
        if [ -n "$(client squeue -h -o %i 2>/dev/null)" ]; then
            client scancel --quiet --partition="$PARTITION" || true
            for _ in $(seq 1 30); do
                [ -z "$(client squeue -h -o %i 2>/dev/null)" ] && break
                sleep 1
            done
        fi
    fi
    stop_pid "$DIR/run/slurmd.pid"
    for file in "$DIR"/run/slurmd-*.pid; do
        [ -e "$file" ] && stop_pid "$file" slurmd
    done
    stop_pid "$DIR/run/slurmctld.pid"
    stop_pid "$DIR/munge/munged.pid"
    say "stopped"
}

cmd_status() {
    local name file
    local daemons=(munged slurmctld slurmd)
    multi && daemons=(munged slurmctld "${NAMES[@]/#/slurmd-}")
    for name in "${daemons[@]}"; do
        file=$DIR/run/$name.pid
        [ "$name" = munged ] && file=$DIR/munge/munged.pid
        if alive "$file" "${name%%-*}"; then echo "$name: running (pid $(cat "$file"))"; else echo "$name: stopped"; fi
    done
    if alive "$DIR/run/slurmctld.pid"; then
        SLURM_CONF=$CONF client sinfo
    fi
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *)
        echo "usage: $0 start|stop|status|env" >&2
        exit 2
        ;;
esac
