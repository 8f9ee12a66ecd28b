#!/usr/bin/env bash
# Install (apt) and start a Slurm with accounting on this machine, as root, without systemd:
# munged, MariaDB, slurmdbd, slurmctld and two slurmd, one per node: <host> (partition `debug`,
# the default, where the tests' jobs run) and <host>-2 (a second slurmd, run with `slurmd -N`;
# with <host> it makes partition `two`, a cluster of two nodes). The cluster is private: its
# configuration is $STATE/etc/slurm.conf (clients find it through SLURM_CONF; /etc/slurm is
# never read or written), its state and spool directories are under $STATE, its daemons listen
# on ports $PORT (slurmctld), $PORT+1 and +2 (the slurmd) and $PORT+3 (slurmdbd), and its
# accounting is database slurm_acct_<cluster>: it coexists with another Slurm on the machine,
# or a second test cluster (another state directory, ports and name). munged and MariaDB are
# shared (started if none runs). Idempotent: a daemon already running is left alone; one
# started here is recorded under $STATE/started/ so that stop.sh stops exactly what this script
# started; when the configuration changed, the Slurm daemons it started are restarted.
# Settings: /work/shared/DESIGN.md section 5.
#   .ci/slurm/start.sh     # prints "slurm ready" when `sacct` and `sbatch` answer, then the
#                         # line to use the cluster: export SLURM_CONF=$STATE/etc/slurm.conf
#   KWNEURO_SLURM_STATE=/some/dir KWNEURO_SLURM_PORT=7000 KWNEURO_SLURM_CLUSTER=other \
#       .ci/slurm/start.sh
set -euo pipefail
STATE=${KWNEURO_SLURM_STATE:-/var/tmp/kwneuro-slurm}
PORT=${KWNEURO_SLURM_PORT:-6900}
CLUSTER=${KWNEURO_SLURM_CLUSTER:-kwneuro}
ETC=$STATE/etc
export SLURM_CONF=$ETC/slurm.conf
[ "$(id -u)" = 0 ] || { echo "start.sh: run as root" >&2; exit 2; }
if [ ! -e "$ETC/slurm.conf" ] && ls "$STATE"/started/slurm* >/dev/null 2>&1; then
    # an earlier start.sh (configuration in /etc/slurm) started these: restarting them here
    # would take the cluster away from whoever uses it
    echo "start.sh: $STATE holds a cluster started by an earlier start.sh (configured in" \
        "/etc/slurm); stop it first (KWNEURO_SLURM_STATE=$STATE .ci/slurm/stop.sh), or give" \
        "another KWNEURO_SLURM_STATE" >&2
    exit 1
fi
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

# ---- configuration, all under $ETC
NODE=$(slurmd -C | head -1 | sed -e 's/ *$//')
HOST=$(hostname -s)
SECOND=$HOST-2
mkdir -p "$ETC" "$STATE/ctld" "$STATE/spool/$HOST" "$STATE/spool/$SECOND" "$STATE/run"
conf=$(mktemp)
cat >"$conf" <<CONF
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool/%n
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
AccountingStoragePort=$((PORT + 3))
JobCompType=jobcomp/none
$NODE NodeAddr=127.0.0.1 State=UNKNOWN
NodeName=$SECOND NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$((PORT + 2)) ${NODE#NodeName=$HOST } State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
PartitionName=two Nodes=$HOST,$SECOND MaxTime=INFINITE State=UP
CONF
chmod 644 "$conf"
if cmp -s "$conf" "$ETC/slurm.conf"; then
    rm "$conf"
else
    mv "$conf" "$ETC/slurm.conf"
    # restart the Slurm daemons started here, with the new configuration
    ours_running=$(cd "$STATE/started" && ls -d slurmd* slurmctld 2>/dev/null || true)
    [ -z "$ours_running" ] || "$(dirname "$0")/stop.sh" $ours_running >/dev/null
fi
cat >"$ETC/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdPort=$((PORT + 3))
SlurmUser=root
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_$CLUSTER
CONF
chmod 600 "$ETC/slurmdbd.conf"

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
echo "export SLURM_CONF=$SLURM_CONF"
