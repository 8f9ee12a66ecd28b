#!/usr/bin/env bash
# Install (apt) and start a Slurm with accounting on this machine, as root, without systemd:
# munged, MariaDB, slurmdbd, slurmctld and two slurmd, one per node: <host> (partition `debug`,
# the default, where the tests' jobs run) and <host>-2 (a second slurmd on port 6820, run with
# `slurmd -N`; with <host> it makes partition `two`, a cluster of two nodes). Idempotent: a
# daemon already running is left alone; one started here is recorded under $STATE/started/ so
# that stop.sh stops exactly what this script started; when the configuration this script
# writes changed, the Slurm daemons it started are restarted. Settings: /work/shared/DESIGN.md
# section 5.
#   .ci/slurm/start.sh            # prints "slurm ready" when `sacct` and `sbatch` answer
#   KWNEURO_SLURM_STATE=/some/dir .ci/slurm/start.sh
set -euo pipefail
STATE=${KWNEURO_SLURM_STATE:-/var/tmp/kwneuro-slurm}
MARK="# written by kwneuro-pydra ci/slurm/start.sh"  # unchanged since the move to .ci/: it finds the files it wrote
[ "$(id -u)" = 0 ] || { echo "start.sh: run as root" >&2; exit 2; }
mkdir -p "$STATE/started" "$STATE/log"

if ! command -v slurmctld >/dev/null || ! command -v slurmdbd >/dev/null \
    || ! command -v mariadbd >/dev/null || ! command -v munged >/dev/null \
    || ! command -v sbatch >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >"$STATE/log/apt.log" 2>&1
    apt-get install -y -q --no-install-recommends munge mariadb-server slurmdbd slurmctld \
        slurmd slurm-client >>"$STATE/log/apt.log" 2>&1 \
        || { tail -20 "$STATE/log/apt.log" >&2; exit 1; }
fi

# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND every 0.2 s until it succeeds
wait_for() {
    local limit=$(( $1 * 5 )) what=$2 i=0; shift 2
    until "$@" >/dev/null 2>&1; do
        i=$((i + 1))
        if [ "$i" -ge "$limit" ]; then
            echo "start.sh: $what did not come up; logs in $STATE/log" >&2; exit 1
        fi
        sleep 0.2
    done
}
# started NAME PIDFILE: record that this script started NAME (stop.sh reads it)
started() { cp "$2" "$STATE/started/$1"; }

# ---- munge
install -d -o munge -g munge -m 0755 /run/munge
if ! pgrep -x munged >/dev/null; then
    [ -s /etc/munge/munge.key ] || { runuser -u munge -- mungekey --create 2>/dev/null \
        || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 2>/dev/null; }
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    runuser -u munge -- munged --pid-file=/run/munge/munged.pid \
        --log-file="/var/log/munge/munged.log" 2>"$STATE/log/munged.err" || {
        install -d -o munge -g munge /var/log/munge
        runuser -u munge -- munged --pid-file=/run/munge/munged.pid
    }
    wait_for 10 munged test -S /run/munge/munge.socket.2
    started munged /run/munge/munged.pid
fi

# ---- MariaDB (socket only)
DB=$STATE/mysql
install -d -o mysql -g mysql "$DB" /run/mysqld
if ! mariadb -u root -e 'select 1' >/dev/null 2>&1; then
    [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql >"$STATE/log/db-install.log" 2>&1
    setsid mariadbd --user=mysql --skip-networking --innodb-buffer-pool-size=512M \
        --innodb-lock-wait-timeout=900 --pid-file="$DB/mariadb.pid" \
        --log-error="$DB/mariadb.err" </dev/null >/dev/null 2>&1 &
    wait_for 60 mariadb mariadb -u root -e 'select 1'
    started mariadb "$DB/mariadb.pid"
fi

# ---- configuration (only files this script wrote are rewritten)
ours() { [ ! -e "$1" ] || head -1 "$1" | grep -qxF "$MARK"; }
NODE=$(slurmd -C | head -1 | sed -e 's/ *$//')
HOST=$(hostname -s)
SECOND=$HOST-2
mkdir -p /etc/slurm /var/spool/slurmctld "/var/spool/slurmd/$HOST" "/var/spool/slurmd/$SECOND" \
    "$STATE/run"
if ours /etc/slurm/slurm.conf; then
    conf=$(mktemp)
    cat >"$conf" <<CONF
$MARK
ClusterName=kwneuro
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd-%n.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
SchedulerParameters=sched_min_interval=0,batch_sched_delay=0
MailProg=/bin/true
ReturnToService=2
MinJobAge=60
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobCompType=jobcomp/none
$NODE NodeAddr=127.0.0.1 State=UNKNOWN
NodeName=$SECOND NodeHostname=$HOST NodeAddr=127.0.0.1 Port=6820 ${NODE#NodeName=$HOST } State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
PartitionName=two Nodes=$HOST,$SECOND MaxTime=INFINITE State=UP
CONF
    chmod 644 "$conf"
    if cmp -s "$conf" /etc/slurm/slurm.conf; then
        rm "$conf"
    else
        mv "$conf" /etc/slurm/slurm.conf
        # restart the Slurm daemons started here, with the new configuration
        ours_running=$(cd "$STATE/started" && ls -d slurmd* slurmctld 2>/dev/null || true)
        [ -z "$ours_running" ] || "$(dirname "$0")/stop.sh" $ours_running >/dev/null
    fi
fi
if ours /etc/slurm/slurmdbd.conf; then
    cat >/etc/slurm/slurmdbd.conf <<CONF
$MARK
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
CONF
    chmod 600 /etc/slurm/slurmdbd.conf
fi

# ---- slurmdbd, slurmctld, slurmd
if ! sacctmgr -n show cluster >/dev/null 2>&1; then
    slurmdbd
    wait_for 30 slurmdbd sacctmgr -n show cluster
    started slurmdbd "$STATE/run/slurmdbd.pid"
fi
if ! scontrol ping >/dev/null 2>&1; then
    slurmctld
    wait_for 30 slurmctld scontrol ping
    started slurmctld "$STATE/run/slurmctld.pid"
fi
for node in "$HOST" "$SECOND"; do
    pidfile=$STATE/run/slurmd-$node.pid
    if ! { [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }; then
        rm -f "$pidfile"
        slurmd -N "$node"
        wait_for 30 "slurmd of $node" test -s "$pidfile"
        started "slurmd-$node" "$pidfile"
    fi
done
# nodes_up: resume a node left down (by a test, or a previous session); true when both are up
nodes_up() {
    local states
    states=$(sinfo -h -N -o '%N %t' | sort -u)
    for node in $(echo "$states" | awk '$2 ~ /^(down|drain|drng|fail)/ {print $1}'); do
        scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true
    done
    [ "$(echo "$states" | grep -cE ' (idle|mix|alloc)$')" = 2 ]
}
wait_for 30 "the nodes" nodes_up
wait_for 30 sacct sacct -n -X -S now
echo "slurm ready ($(sinfo -h -N -o '%N %P %c CPUs %m MB %t' | paste -sd ';' -))"
