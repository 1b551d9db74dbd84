#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for the Slurm executor's tests (CI runs them):
#
#   scripts/slurm.sh start DIR    # install slurm-wlm + munge if needed, configure, start, wait
#   scripts/slurm.sh stop DIR     # stop the daemons by their process ids
#
# DIR holds the configuration (DIR/slurm.conf: point SLURM_CONF at it), state, spool and logs.
# The node is localhost: select/cons_tres with CR_Core_Memory and a DefMemPerCPU so that jobs
# share it, EnforcePartLimits=ALL, and two GPUs (gres) backed by placeholder device files, so
# that Slurm hands jobs CUDA_VISIBLE_DEVICES as on a GPU node. munged, slurmctld and slurmd
# run as root without systemd. Needs root (or sudo) for apt-get and the daemons.
set -euo pipefail

cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || {
  echo "usage: scripts/slurm.sh start|stop DIR" >&2
  exit 2
}
sudo=""
[ "$(id -u)" -ne 0 ] && sudo=sudo

stop() {
  for d in slurmd slurmctld munged; do
    local pid_file=$dir/$d.pid
    [ -s "$pid_file" ] || continue
    local pid
    pid=$(cat "$pid_file")
    $sudo kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
      $sudo kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    $sudo kill -9 "$pid" 2>/dev/null || true
    rm -f "$pid_file"
  done
}

if [ "$cmd" = stop ]; then
  stop
  exit 0
fi
[ "$cmd" = start ] || {
  echo "slurm.sh: unknown command $cmd (start or stop)" >&2
  exit 2
}

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  echo "slurm.sh: installing slurm-wlm and munge" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    slurm-wlm munge >/dev/null
fi

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
stop
mkdir -p "$dir/state" "$dir/spool" "$dir/munge" "$dir/dev"
host=$(hostname -s)
cpus=4
# Placeholder GPU device files: Slurm wants character devices to count and number the GPUs
# (nothing opens them). mknod where allowed, else links to two devices every machine has.
rm -f "$dir/dev/nvidia0" "$dir/dev/nvidia1"
if ! { $sudo mknod "$dir/dev/nvidia0" c 195 0 && $sudo mknod "$dir/dev/nvidia1" c 195 1; } 2>/dev/null; then
  rm -f "$dir/dev/nvidia0" "$dir/dev/nvidia1"
  ln -s /dev/null "$dir/dev/nvidia0"
  ln -s /dev/zero "$dir/dev/nvidia1"
fi

cat >"$dir/slurm.conf" <<EOF
ClusterName=flora-ci
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldPort=${FLORA_SLURMCTLD_PORT:-6817}
SlurmdPort=${FLORA_SLURMD_PORT:-6818}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=256
EnforcePartLimits=ALL
GresTypes=gpu
SlurmdParameters=config_overrides
MinJobAge=600
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=4096 Gres=gpu:2 State=UNKNOWN
PartitionName=flora Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
cat >"$dir/gres.conf" <<EOF
NodeName=$host Name=gpu File=$dir/dev/nvidia[0-1]
EOF
rm -f "$dir/cgroup.conf"

# munge: a key of our own and a socket in DIR, so nothing under /etc or /run is needed.
key=$dir/munge/munge.key
[ -s "$key" ] || dd if=/dev/urandom of="$key" bs=1024 count=1 status=none
chmod 0711 "$dir/munge"
chmod 0400 "$key"
$sudo munged --force --key-file="$key" --socket="$dir/munge/munge.socket" \
  --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" --seed-file="$dir/munge/seed"
export SLURM_CONF=$dir/slurm.conf
$sudo env SLURM_CONF="$SLURM_CONF" slurmctld -c -i
$sudo env SLURM_CONF="$SLURM_CONF" slurmd -c

for _ in $(seq 120); do
  state=$(sinfo -h -N -o "%T" 2>/dev/null | head -1 || true)
  [ "$state" = idle ] && {
    echo "slurm.sh: node $host idle ($cpus CPUs, 2 GPUs); SLURM_CONF=$SLURM_CONF" >&2
    exit 0
  }
  sleep 0.5
done
echo "slurm.sh: the node did not become idle (state: ${state:-none}); logs in $dir" >&2
tail -n 20 "$dir/slurmctld.log" "$dir/slurmd.log" >&2 || true
exit 1
