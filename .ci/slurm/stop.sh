#!/usr/bin/env bash
# Stop what .ci/slurm/start.sh started (and nothing else): cancel the jobs, then stop the slurmd
# of each node, slurmctld, slurmdbd, MariaDB and munged, each only if start.sh recorded starting
# it.   .ci/slurm/stop.sh DAEMON...   stops only those, and cancels no job: start.sh restarts
# Slurm's daemons this way when their configuration changed (slurmctld saves its jobs on
# SIGTERM and recovers them when it starts again; running jobs outlive a slurmd restart).
set -uo pipefail
STATE=${KWNEURO_SLURM_STATE:-/var/tmp/kwneuro-slurm}
export SLURM_CONF=$STATE/etc/slurm.conf  # the cluster start.sh made there, not another
[ -d "$STATE/started" ] || exit 0
if [ $# = 0 ]; then
    if [ -e "$STATE/started/slurmctld" ]; then
        scancel --quiet --user=root 2>/dev/null || true
    fi
    # shellcheck disable=SC2046  # one record per slurmd: slurmd-<node>
    set -- $(cd "$STATE/started" && ls -d slurmd* 2>/dev/null) slurmctld slurmdbd mariadb munged
fi
for daemon in "$@"; do
    record=$STATE/started/$daemon
    [ -s "$record" ] || continue
    pid=$(cat "$record")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    fi
    rm -f "$record"
done
echo "slurm stopped"
