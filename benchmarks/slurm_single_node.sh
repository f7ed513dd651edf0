#!/usr/bin/env bash
# A real single-node Slurm cluster on this Debian machine, to try the hydra/launcher=slurm preset
# for real (tests/test_slurm_launcher.py uses it). Needs root, apt and no systemd.
#
#   benchmarks/slurm_single_node.sh up       install (first time), configure, start; rerunnable
#   benchmarks/slurm_single_node.sh down     stop the daemons; remove slurm.conf, state and logs
#   benchmarks/slurm_single_node.sh status   daemons, partition and node state
#
# One partition (SLURM_PARTITION, default "debug") holding this host with its CPUs and memory as
# `slurmd -C` reports them; proctrack/linuxproc and task/none (no cgroups); no accounting
# storage, so `sacct` cannot answer: gradsweep's Slurm launcher then reads job states from
# `squeue`. `up` prints the partition name as its last line. The packages and the munge key stay
# after `down` (apt-get purge slurmctld slurmd slurm-client munge removes them).
set -euo pipefail

PARTITION=${SLURM_PARTITION:-debug}
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
MARK="# written by gradsweep benchmarks/slurm_single_node.sh"
STATE_DIRS=(/var/spool/slurmctld /var/spool/slurmd /var/log/slurm)
MUNGE_KEY=/etc/munge/munge.key
PACKAGES=(slurmctld slurmd slurm-client munge)

die() {
    echo "slurm_single_node: $*" >&2
    exit 1
}

installed() {
    local pkg
    for pkg in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || return 1
    done
}

install_packages() {
    installed && return 0
    command -v apt-get >/dev/null || die "apt-get not found: install ${PACKAGES[*]} by hand"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${PACKAGES[@]}" >/dev/null
}

write_config() {
    local node
    node=$(slurmd -C | head -1)
    [[ $node == NodeName=* ]] || die "slurmd -C gave no node line: $node"
    [[ ! -e $CONF ]] || grep -qF "$MARK" "$CONF" ||
        die "$CONF exists and was not written by this script; not touching it"
    mkdir -p "$CONF_DIR" "${STATE_DIRS[@]}"
    cat >"$CONF.new" <<EOF
$MARK
ClusterName=gradsweep
SlurmctldHost=$(hostname -s)
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
DefMemPerCPU=1024
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
$node State=UNKNOWN
PartitionName=$PARTITION Nodes=$(hostname -s) Default=YES MaxTime=INFINITE State=UP
EOF
    if cmp -s "$CONF.new" "$CONF"; then
        rm "$CONF.new"
        return 1
    fi
    mv "$CONF.new" "$CONF"
}

pid_of() {
    local pid
    pid=$(cat "$1" 2>/dev/null) && [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

running() {
    pid_of "$1" >/dev/null
}

start_munge() {
    install -d -o munge -g munge -m 0700 "$(dirname "$MUNGE_KEY")"
    if [[ ! -s $MUNGE_KEY ]]; then
        mungekey --create --keyfile="$MUNGE_KEY" --force
    fi
    chown munge:munge "$MUNGE_KEY"
    chmod 0400 "$MUNGE_KEY"
    mkdir -p /run/munge
    chown munge:munge /run/munge
    running /run/munge/munged.pid || runuser -u munge -- /usr/sbin/munged
    munge -n | unmunge >/dev/null || die "munge does not work"
}

stop_slurm() {
    local pid_file pid
    for pid_file in /run/slurmctld.pid /run/slurmd.pid; do
        pid=$(pid_of "$pid_file") || pid=""
        if [[ -n $pid ]]; then
            kill "$pid"
            while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
        fi
        rm -f "$pid_file"
    done
}

wait_for_node() {
    local deadline=$((SECONDS + 60)) state=""
    while ((SECONDS < deadline)); do
        state=$(sinfo -h -p "$PARTITION" -o %t 2>/dev/null || true)
        case $state in
            idle* | mix* | alloc*) return 0 ;;
            drain* | down*) scontrol update NodeName="$(hostname -s)" State=RESUME || true ;;
        esac
        sleep 0.5
    done
    die "node not ready after 60 s (state: ${state:-none}); see /var/log/slurm/"
}

up() {
    [[ $(id -u) == 0 ]] || die "needs root (daemons, packages, /etc/slurm)"
    install_packages
    local changed=0
    write_config && changed=1
    start_munge
    if ((changed)) || ! running /run/slurmctld.pid || ! running /run/slurmd.pid; then
        stop_slurm
        slurmctld
        slurmd
    fi
    wait_for_node
    echo "$PARTITION"
}

down() {
    local pid
    [[ $(id -u) == 0 ]] || die "needs root"
    if [[ -e $CONF ]] && ! grep -qF "$MARK" "$CONF"; then
        die "$CONF was not written by this script; not touching it"
    fi
    stop_slurm
    pid=$(pid_of /run/munge/munged.pid) || pid=""
    [[ -z $pid ]] || kill "$pid"
    rm -rf "$CONF" "${STATE_DIRS[@]}"
}

status() {
    local pid_file
    for pid_file in /run/munge/munged.pid /run/slurmctld.pid /run/slurmd.pid; do
        if running "$pid_file"; then echo "$(basename "$pid_file" .pid): running"; else
            echo "$(basename "$pid_file" .pid): stopped"; fi
    done
    sinfo 2>/dev/null || true
}

case ${1:-} in
    up) up ;;
    down) down ;;
    status) status ;;
    *) die "usage: $0 up|down|status" ;;
esac
