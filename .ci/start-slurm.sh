#!/bin/bash
# start-slurm.sh - idempotent single-node SLURM (+ munge) for the test suite and CI on Debian 12.
#
# Works without systemd and without cgroups (proctrack/linuxproc, task/none, no accounting).
# All config/state/logs live under $SLURM_BASE (default /tmp/slurm-ci); nothing is written
# to /etc except by apt itself (and /etc/slurm/slurm.conf symlink if SLURM_LINK_ETC=1).
#
# Usage:   bash start-slurm.sh          # install (if needed) + configure + start; safe to re-run
#          bash start-slurm.sh stop     # stop slurmd, slurmctld, munged (by pid file)
# Then:    export SLURM_CONF=$SLURM_BASE/etc/slurm.conf   (or: source $SLURM_BASE/slurm.env)
#
# Knobs (env):
#   SLURM_BASE=/tmp/slurm-ci   where etc/, state/, fakedev/ go
#   SLURM_CPUS=<nproc>           CPUs advertised for the node (may exceed real cores:
#                                SlurmdParameters=config_overrides is set, so e.g. 8 on a 2-core box
#                                lets `srun -n 4` / `sbatch -n 4` run without --overcommit)
#   FAKE_GPUS=3                  number of fake GPUs (gres/gpu backed by char devices 1:3 == /dev/null);
#                                0 disables GRES entirely
#   SLURM_MPI_DEFAULT=pmix       MpiDefault (pmix needs libpmix-dev on Debian 12; "none" otherwise)
#   SLURM_LINK_ETC=0             1 = also symlink /etc/slurm/slurm.conf -> our config (no SLURM_CONF needed)
#   SLURM_APT_OPTS=""            extra options for apt-get install
set -euo pipefail

BASE=${SLURM_BASE:-/tmp/slurm-ci}
ETC=$BASE/etc
STATE=$BASE/state
MUNGE_DIR=$STATE/munge
MUNGE_SOCK=$MUNGE_DIR/munge.socket.2
FAKE_GPUS=${FAKE_GPUS:-3}
MPI_DEFAULT=${SLURM_MPI_DEFAULT:-pmix}
NODE=$(hostname -s)
export SLURM_CONF=$ETC/slurm.conf
T0=$(date +%s%N)

log() { local ms=$(( ($(date +%s%N) - T0) / 1000000 )); printf '[start-slurm %3d.%03ds] %s\n' $((ms / 1000)) $((ms % 1000)) "$*"; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
stop_pidfile() {  # stop_pidfile <pidfile> <name>: TERM, wait up to 15 s, then KILL (only that pid)
  local pf=$1 name=$2 pid i
  alive "$pf" || return 0
  pid=$(cat "$pf"); log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 75); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  kill -KILL "$pid" 2>/dev/null || true
}

if [ "${1:-start}" = stop ]; then
  stop_pidfile "$STATE/run/slurmd.pid" slurmd
  stop_pidfile "$STATE/run/slurmctld.pid" slurmctld
  stop_pidfile "$MUNGE_DIR/munged.pid" munged
  exit 0
fi

# ---------------------------------------------------------------- 1. packages
PKGS="slurmctld slurmd slurm-client munge"
[ "$MPI_DEFAULT" = pmix ] && PKGS="$PKGS libpmix-dev"   # slurm's mpi_pmix dlopens .../pmix2/lib/libpmix.so (only in -dev)
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
done
if [ -n "$missing" ]; then
  log "apt-get install:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends ${SLURM_APT_OPTS:-} $missing >/dev/null
  log "packages installed"   # (policy-rc.d / no systemd: postinst does not start daemons - we do)
else
  log "packages already installed"
fi

# ---------------------------------------------------------------- 2. munge
if [ ! -s /etc/munge/munge.key ]; then
  runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key
fi
mkdir -p "$BASE" "$ETC" "$STATE"/{run,log,spool/ctld,spool/d} "$MUNGE_DIR"
chown munge:munge "$MUNGE_DIR"
chmod 0755 "$MUNGE_DIR"          # munged insists the socket dir is o+x ("execute permissions for all required")
if alive "$MUNGE_DIR/munged.pid" && munge -n -S "$MUNGE_SOCK" | unmunge -S "$MUNGE_SOCK" >/dev/null 2>&1; then
  log "munged already running (pid $(cat "$MUNGE_DIR/munged.pid"))"
else
  rm -f "$MUNGE_SOCK" "$MUNGE_SOCK.lock" "$MUNGE_DIR/munged.pid"
  runuser -u munge -- /usr/sbin/munged --socket="$MUNGE_SOCK" --pid-file="$MUNGE_DIR/munged.pid" \
      --log-file="$MUNGE_DIR/munged.log" --seed-file="$MUNGE_DIR/munged.seed"
  for i in $(seq 50); do [ -S "$MUNGE_SOCK" ] && break; sleep 0.1; done
  munge -n -S "$MUNGE_SOCK" | unmunge -S "$MUNGE_SOCK" >/dev/null
  log "munged started (pid $(cat "$MUNGE_DIR/munged.pid"))"
fi

# ---------------------------------------------------------------- 3. config
HW=$(slurmd -C | head -1)                        # NodeName=vm CPUs=2 ... RealMemory=24105
REAL_MEM=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$HW")
MEM=$(( REAL_MEM * 9 / 10 ))                     # RealMemory > actual => node INVAL; keep a margin
CPUS=${SLURM_CPUS:-$(nproc)}
GRES_NODE=""; GRES_TYPES=""
if [ "$FAKE_GPUS" -gt 0 ]; then
  GRES_TYPES="GresTypes=gpu"; GRES_NODE="Gres=gpu:$FAKE_GPUS"
  mkdir -p "$BASE/fakedev"
  for i in $(seq 0 $((FAKE_GPUS - 1))); do   # gres/gpu needs File= entries that are char/block devices
    [ -c "$BASE/fakedev/nvidia$i" ] || { rm -f "$BASE/fakedev/nvidia$i"; mknod -m 666 "$BASE/fakedev/nvidia$i" c 1 3; }
  done
fi

NEWCONF=$(mktemp); NEWGRES=$(mktemp)
cat >"$NEWCONF" <<EOF
# generated by start-slurm.sh - single node, no cgroups, no accounting
ClusterName=ci
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCK
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SlurmdParameters=config_overrides
EnforcePartLimits=ALL
MpiDefault=$MPI_DEFAULT
ReturnToService=2
SlurmdTimeout=300
InactiveLimit=0
MinJobAge=300
KillWait=5
Waittime=0
$GRES_TYPES
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM $GRES_NODE State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
if [ "$FAKE_GPUS" -gt 0 ]; then
  printf 'AutoDetect=off\nNodeName=%s Name=gpu File=%s/fakedev/nvidia[0-%d]\n' "$NODE" "$BASE" $((FAKE_GPUS - 1)) >"$NEWGRES"
fi
CHANGED=0
cmp -s "$NEWCONF" "$ETC/slurm.conf" || { install -m 644 "$NEWCONF" "$ETC/slurm.conf"; CHANGED=1; }
if [ -s "$NEWGRES" ]; then
  cmp -s "$NEWGRES" "$ETC/gres.conf" || { install -m 644 "$NEWGRES" "$ETC/gres.conf"; CHANGED=1; }
elif [ -e "$ETC/gres.conf" ]; then rm -f "$ETC/gres.conf"; CHANGED=1; fi
rm -f "$NEWCONF" "$NEWGRES"
[ "$CHANGED" = 1 ] && log "config written to $ETC (changed)" || log "config unchanged"
printf 'export SLURM_CONF=%s\n' "$ETC/slurm.conf" >"$BASE/slurm.env"
if [ "${SLURM_LINK_ETC:-0}" = 1 ]; then mkdir -p /etc/slurm; ln -sfn "$ETC/slurm.conf" /etc/slurm/slurm.conf; fi

# ---------------------------------------------------------------- 4. daemons
if [ "$CHANGED" = 1 ]; then           # config changed -> restart cleanly, drop old state
  stop_pidfile "$STATE/run/slurmd.pid" slurmd
  stop_pidfile "$STATE/run/slurmctld.pid" slurmctld
  CTLD_FLAGS="-c"
else
  CTLD_FLAGS=""
fi
if alive "$STATE/run/slurmctld.pid"; then
  log "slurmctld already running (pid $(cat "$STATE/run/slurmctld.pid"))"
else
  # shellcheck disable=SC2086
  slurmctld $CTLD_FLAGS -f "$SLURM_CONF"
  for i in $(seq 50); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
  scontrol ping | grep -q UP || { tail -20 "$STATE/log/slurmctld.log"; exit 1; }
  log "slurmctld started (pid $(cat "$STATE/run/slurmctld.pid"))"
fi
if alive "$STATE/run/slurmd.pid"; then
  log "slurmd already running (pid $(cat "$STATE/run/slurmd.pid"))"
else
  slurmd -f "$SLURM_CONF"
  for i in $(seq 50); do alive "$STATE/run/slurmd.pid" && break; sleep 0.1; done   # pid file appears after fork
  log "slurmd started (pid $(cat "$STATE/run/slurmd.pid"))"
fi

# ---------------------------------------------------------------- 5. wait for node, smoke test
st=""
for i in $(seq 100); do
  st=$(sinfo -h -n "$NODE" -o %t 2>/dev/null || true)
  case "$st" in
    idle|mix|alloc|comp) break ;;
    drain*|drng|inval|down*|fail*) scontrol update nodename="$NODE" state=resume 2>/dev/null || true ;;
  esac
  sleep 0.3
done
case "$st" in idle|mix|alloc|comp) ;; *)
  echo "node $NODE not usable (state '$st')"; scontrol show node "$NODE"; tail -20 "$STATE/log/slurmd.log"; exit 1 ;;
esac
timeout 60 srun -N1 -n1 -t 1 true
log "ready: $(sinfo -h -o '%P %a %D %t %c cpus %G')"
echo "export SLURM_CONF=$SLURM_CONF     # (or: source $BASE/slurm.env)"
