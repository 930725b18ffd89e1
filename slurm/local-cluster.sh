#!/usr/bin/env bash
# A real one-node Slurm cluster on this machine, for development and the tests in tests/slurm/.
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
set -euo pipefail

DIR=${MMTC_SLURM_DIR:-/tmp/mmtc-slurm}
PORT=${MMTC_SLURM_PORT:-6917}
FIRST_JOB_ID=${MMTC_SLURM_FIRST_JOB_ID:-1}
PARTITION=${MMTC_SLURM_PARTITION:-cpu}
CONF=$DIR/etc/slurm.conf
MUNGE_SOCKET=$DIR/munge/munge.socket

say() { echo "local-cluster: $*" >&2; }

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
    local host node cpus mem
    host=$(hostname -s)
    node=$(node_name)
    # At least 2 CPUs, so that a 2-task test job fits even on a 1-core machine (config_overrides
    # below makes slurmd trust this count instead of draining the node for having fewer).
    cpus=$(getconf _NPROCESSORS_ONLN)
    [ "$cpus" -ge 2 ] || cpus=2
    # Slurm drains a node that has less memory than configured: stay under what it has.
    mem=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    mkdir -p "$DIR"/{etc,state,spool,log,run}
    cat >"$CONF" <<EOF
# Written by slurm/local-cluster.sh; verified configuration (shared/notes/slurm-local.md).
ClusterName=mmtc-local
# The address: clients and slurmd reach the controller without a DNS lookup of the host name.
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire is also how long a requeued job waits before it may run again (default 120 s).
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
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
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
    # No cgroup.conf: Slurm 22.05 has no CgroupPlugin=disabled, and slurmd fails with it.
}

# A pid file names a live daemon only if that pid is still the same program (pids get reused).
alive() { [ -f "$1" ] && [ "$(cat "/proc/$(cat "$1")/comm" 2>/dev/null)" = "$(basename "$1" .pid)" ]; }

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
    for _ in $(seq 1 60); do
        if sinfo -h -o '%T' 2>/dev/null | grep -qx 'idle'; then
            return 0
        fi
        sleep 1
    done
    say "the node did not become idle within 60 s; see $DIR/log/"
    sinfo -N -l >&2 || true
    return 1
}

cmd_start() {
    # slurmd runs as root (SlurmUser=root), and installing the packages needs root too.
    if [ "$(id -u)" -ne 0 ]; then
        say "needs root (to install slurm-wlm and munge with apt and to run slurmd); not started"
        exit 3
    fi
    install_packages
    export SLURM_CONF=$CONF
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
    if ! alive "$file"; then
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
    if alive "$DIR/run/slurmctld.pid"; then
        export SLURM_CONF=$CONF
        if [ -n "$(squeue -h -o %i 2>/dev/null)" ]; then
            scancel --quiet --partition="$PARTITION" || true
            for _ in $(seq 1 30); do
                [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
                sleep 1
            done
        fi
    fi
    stop_pid "$DIR/run/slurmd.pid"
    stop_pid "$DIR/run/slurmctld.pid"
    stop_pid "$DIR/munge/munged.pid"
    say "stopped"
}

cmd_status() {
    local name file
    for name in munged slurmctld slurmd; do
        file=$DIR/run/$name.pid
        [ "$name" = munged ] && file=$DIR/munge/munged.pid
        if alive "$file"; then echo "$name: running (pid $(cat "$file"))"; else echo "$name: stopped"; fi
    done
    if alive "$DIR/run/slurmctld.pid"; then
        SLURM_CONF=$CONF sinfo
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
