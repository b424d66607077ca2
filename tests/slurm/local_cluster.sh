#!/usr/bin/env bash
# A one-node Slurm cluster on localhost for tests: munged, slurmctld and slurmd, each with its
# own socket, state and logs under DIR (nothing in /etc is touched). Needs Debian's slurm-wlm
# and munge (installed by `install`); run as root (SlurmUser=root).
#   local_cluster.sh install          apt-get install slurm-wlm munge when missing
#   local_cluster.sh start DIR        start the daemons; prints `export SLURM_CONF=DIR/slurm.conf`
#   local_cluster.sh stop DIR         stop them (idempotent)
set -euo pipefail
cmd=${1:?usage: local_cluster.sh install|start DIR|stop DIR}

case "$cmd" in
install)
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq slurm-wlm munge >/dev/null
  fi
  ;;
start)
  d=${2:?DIR}
  mkdir -p "$d"/{state,spool,log,munge,run}
  [ -f "$d/munge/munge.key" ] || head -c 1024 /dev/urandom >"$d/munge/munge.key"
  chmod 700 "$d/munge"
  chmod 400 "$d/munge/munge.key"
  munged --key-file="$d/munge/munge.key" --socket="$d/munge/munge.socket" \
    --pid-file="$d/munge/munged.pid" --log-file="$d/munge/munged.log" \
    --seed-file="$d/munge/seed" --force
  cpus=$(nproc)
  mem=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2))
  # Ports from the environment so two clusters (or a system one) do not collide.
  cport=${SLURM_TEST_CTLD_PORT:-16817}
  dport=${SLURM_TEST_SLURMD_PORT:-16818}
  cat >"$d/slurm.conf" <<CONF
ClusterName=knnlmtest
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$d/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$d/state
SlurmdSpoolDir=$d/spool
SlurmctldPidFile=$d/run/slurmctld.pid
SlurmdPidFile=$d/run/slurmd.pid
SlurmctldLogFile=$d/log/slurmctld.log
SlurmdLogFile=$d/log/slurmd.log
SlurmctldPort=$cport
SlurmdPort=$dport
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=$(hostname -s) NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
  export SLURM_CONF="$d/slurm.conf"
  slurmctld -f "$SLURM_CONF"
  slurmd -f "$SLURM_CONF"
  for _ in $(seq 1 60); do
    if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
      echo "export SLURM_CONF=$SLURM_CONF"
      exit 0
    fi
    sleep 0.5
  done
  echo "slurm did not come up; logs in $d/log" >&2
  tail -n 20 "$d/log/"*.log >&2 || true
  exit 1
  ;;
stop)
  d=${2:?DIR}
  pids=()
  for p in "$d/run/slurmd.pid" "$d/run/slurmctld.pid" "$d/munge/munged.pid"; do
    if [ -f "$p" ]; then pids+=("$(cat "$p")"); fi
  done
  [ ${#pids[@]} -eq 0 ] || kill "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 1 50); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive -eq 0 ] && break
    sleep 0.1
  done
  ;;
*)
  echo "usage: local_cluster.sh install|start DIR|stop DIR" >&2
  exit 2
  ;;
esac
