#!/usr/bin/env bash
# Install (apt) and start a single-node Slurm with accounting on this machine, as root, without
# systemd: munged, MariaDB, slurmdbd, slurmctld, slurmd. Idempotent: a daemon already running is
# left alone; one started here is recorded under $STATE/started/ so that stop.sh stops exactly
# what this script started. Settings: /work/shared/DESIGN.md section 5.
#   ci/slurm/start.sh            # prints "slurm ready" when `sacct` and `sbatch` answer
#   KWNEURO_SLURM_STATE=/some/dir ci/slurm/start.sh
set -euo pipefail
STATE=${KWNEURO_SLURM_STATE:-/var/tmp/kwneuro-slurm}
MARK="# written by kwneuro-pydra ci/slurm/start.sh"
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
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd "$STATE/run"
if ours /etc/slurm/slurm.conf; then
    cat >/etc/slurm/slurm.conf <<CONF
$MARK
ClusterName=kwneuro
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
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
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
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
if ! pgrep -x slurmd >/dev/null; then
    slurmd
    wait_for 30 "the node" sh -c "sinfo -h -N -o %t | grep -qE '^(idle|mix|alloc)'"
    started slurmd "$STATE/run/slurmd.pid"
fi
scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
wait_for 30 sacct sacct -n -X -S now
echo "slurm ready ($(sinfo -h -N -o '%N %c CPUs %m MB %t'))"
