#!/bin/bash
# .ci/start-multinode.sh - a real N-node SLURM cluster on one Debian 12 machine, for the tests and `make cluster-up`.
#
# Each node is a network namespace (its own address; slurmd on the normal port), a UTS namespace (its own
# hostname) and a mount namespace (the cluster hosts file over /etc/hosts, a private /dev/shm, its own node-local
# scratch at $PNC_BASE/nodelocal). The rest of the filesystem is shared, as NFS is on a real cluster. The nodes
# hang off one bridge in a namespace of its own ("the switch"): private subnet, no default route, no NAT, nothing
# attached to the machine's interfaces. While the cluster exists the root namespace carries an `unreachable`
# route for the subnet, so a client started in the wrong namespace fails at once instead of sending a packet out.
#
#     [pnc-ctl: ctl 10.201.0.1 ]--pnc0==v-ctl--+
#     [pnc-n1 : n1  10.201.0.11]--pnc0==v-n1 --+-- br-pnc (namespace pnc-sw)
#     [pnc-n2 : n2  10.201.0.12]--pnc0==v-n2 --+
#
# "ctl" runs slurmctld and is the login node: every client (srun, sbatch, mpirun, make sbatch-...) runs there:
#     source /tmp/pneumo-hpc-cluster/cluster.env; srun -N2 hostname     # bin/srun enters ctl, then runs srun
#     /tmp/pneumo-hpc-cluster/bin/pnc-exec make sbatch-ddp NODES=2 GPUS=2
# munged runs in the root namespace (a unix socket only).
#
# Usage:  start-multinode.sh [start]      network + munged + slurmctld + one slurmd per node; idempotent
#         start-multinode.sh stop         cancel jobs, stop daemons by pid, kill what is left inside OUR
#                                         namespaces, delete them and the route; idempotent
#         start-multinode.sh status | exec CMD...
#         start-multinode.sh link NODE RATE|off     tbf on NODE's link both ways (1gbit, 200mbit; no netem here)
#         start-multinode.sh kill-node NODE         crash: SIGKILL every process in NODE's namespace
#         start-multinode.sh unplug|plug NODE       link down/up at the switch (a silent loss)
#         start-multinode.sh boot NODE              start NODE's slurmd again (after kill-node), re-plug its link
#         start-multinode.sh start              also boots every killed node and re-plugs every unplugged one
# Knobs: NODES=2 CPUS=4 (per node) MEM_MB=4000 FAKE_GPUS=2 (per node; 0 = no GRES) SLURMD_TIMEOUT=20
#        PNC_BASE=/tmp/pneumo-hpc-cluster PNC_NET=10.201.0 (a /24) PNC_PREFIX=pnc CRED_EXPIRE=10 (s a requeued
#        job waits) LINK_RATE= (all links)
set -euo pipefail

BASE=${PNC_BASE:-/tmp/pneumo-hpc-cluster}
NODES=${NODES:-2}
CPUS=${CPUS:-4}
MEM_MB=${MEM_MB:-4000}
FAKE_GPUS=${FAKE_GPUS:-2}
MPI_DEFAULT=${MPI_DEFAULT:-pmix}
NET=${PNC_NET:-10.201.0}
NSP=${PNC_PREFIX:-pnc}
NP=n
CTLD_PORT=${CTLD_PORT:-6917}
SLURMD_PORT=${SLURMD_PORT:-6918}
SLURMD_TIMEOUT=${SLURMD_TIMEOUT:-20}
CRED_EXPIRE=${CRED_EXPIRE:-10}
LINK_RATE=${LINK_RATE:-}
SHM_MB=${SHM_MB:-1024}
IFNAME=${NSP}0                     # the same interface name on every node (IFNAME=pnc0 for the jobs)
BR=br-$NSP

ETC=$BASE/etc
STATE=$BASE/state
BIN=$BASE/bin
RUN=$STATE/run
LOGD=$STATE/log
MUNGE_DIR=$STATE/munge
MUNGE_SOCK=$MUNGE_DIR/munge.socket.2
MUNGE_KEY=$MUNGE_DIR/munge.key
NSLIST=$STATE/netns.created        # every namespace this script created (stop deletes only these)
NODELOCAL=$BASE/nodelocal          # TmpFS: each node bind-mounts its own dir here
CONF=$ETC/slurm.conf
export SLURM_CONF=$CONF
T0=$(date +%s%N)

trap '' PIPE   # `... | head` must not kill us half-way through a stop/kill-node
log() { local ms=$(( ($(date +%s%N) - T0) / 1000000 )); printf '[cluster %3d.%03ds] %s\n' $((ms / 1000)) $((ms % 1000)) "$*" >&2 2>/dev/null || true; }
die() { log "ERROR: $*"; exit 1; }
# alive <pidfile> <comm>: pid file exists, process lives AND is the expected program (no pid-reuse accidents)
alive() { local p; [ -s "$1" ] || return 1; p=$(cat "$1"); kill -0 "$p" 2>/dev/null && [ "$(cat /proc/$p/comm 2>/dev/null)" = "$2" ]; }
stop_many() {  # stop_many <pidfile:comm>...: TERM all at once, wait up to 15 s, KILL stragglers (only those pids)
  local e pf c pids="" p i
  for e in "$@"; do
    pf=${e%:*}; c=${e##*:}
    if alive "$pf" "$c"; then p=$(cat "$pf"); log "stopping $c (pid $p)"; kill -TERM "$p" 2>/dev/null || true; pids="$pids $p"; fi
    rm -f "$pf"
  done
  for i in $(seq 75); do
    e=0; for p in $pids; do kill -0 "$p" 2>/dev/null && e=1; done
    [ "$e" = 0 ] && return 0
    sleep 0.2
  done
  for p in $pids; do kill -0 "$p" 2>/dev/null && { log "pid $p ignored TERM -> KILL"; kill -KILL "$p" 2>/dev/null || true; }; done
  return 0
}
node_names() { local i; for i in $(seq 1 "$NODES"); do echo "$NP$i"; done; }
all_hosts() { echo ctl; node_names; }
ip_of() { case $1 in ctl) echo "$NET.1" ;; *) echo "$NET.$((10 + ${1#"$NP"}))" ;; esac; }
ns_of() { echo "$NSP-$1"; }
ns_exists() { [ -e "/run/netns/$1" ]; }
ns_pids() { ns_exists "$1" && ip netns pids "$1" 2>/dev/null || true; }
kill_ns_pids() {  # kill_ns_pids <ns> <sig>: only processes INSIDE a namespace we created = ours
  local ns=$1 sig=$2 p
  for p in $(ns_pids "$ns"); do
    log "  $ns: kill -$sig $p ($(tr '\0' ' ' </proc/$p/cmdline 2>/dev/null | cut -c1-80))"
    kill "-$sig" "$p" 2>/dev/null || true
  done
}
nodes_range() { if [ "$NODES" = 1 ]; then echo "${NP}1"; else echo "$NP[1-$NODES]"; fi; }

# ---------------------------------------------------------------- generated helpers (bin/)
write_helpers() {
  mkdir -p "$BIN"
  # pnc-enter HOST CMD...: run CMD "on" HOST (netns + own hostname + cluster /etc/hosts; compute
  # nodes also get a private /dev/shm and their own node-local dir on $NODELOCAL)
  cat >"$BIN/pnc-enter.new" <<EOF
#!/bin/sh
# generated by .ci/start-multinode.sh
[ \$# -ge 2 ] || { echo "usage: pnc-enter HOST CMD..." >&2; exit 2; }
h=\$1; shift
[ -e "/run/netns/$NSP-\$h" ] || { echo "pnc-enter: no namespace $NSP-\$h (cluster not started?)" >&2; exit 1; }
# nsenter, not "ip netns exec": the latter remounts /sys for the netns, which drops the
# /sys/fs/cgroup mounts and slurmd 22.05 then dies ("Unable to initialize cgroup plugin")
exec nsenter --net="/run/netns/$NSP-\$h" unshare --uts --mount --propagation private /bin/sh -c '
  set -e; h=\$1; shift
  hostname "\$h"
  mount --bind "$ETC/hosts" /etc/hosts
  if [ "\$h" != ctl ]; then
    mount -t tmpfs -o size=${SHM_MB}m,mode=1777 "shm-\$h" /dev/shm
    mkdir -p "$STATE/nodes/\$h/tmp"; chmod 1777 "$STATE/nodes/\$h/tmp"
    mount --bind "$STATE/nodes/\$h/tmp" "$NODELOCAL"
  fi
  exec "\$@"' pnc-enter "\$h" "\$@"
EOF
  # pnc-exec [CMD...]: run CMD on the login node "ctl" (no-op wrapper when already inside a cluster
  # namespace, e.g. srun inside a batch script).  Symlinked as srun, sbatch, ... below.
  cat >"$BIN/pnc-exec.new" <<EOF
#!/bin/sh
# generated by .ci/start-multinode.sh
export SLURM_CONF="$CONF"
me=\${0##*/}
if [ "\$me" = pnc-exec ]; then [ \$# -gt 0 ] || set -- bash; else set -- "/usr/bin/\$me" "\$@"; fi
case "\$(ip netns identify 2>/dev/null)" in
  $NSP-ctl|$NSP-$NP[0-9]*) exec "\$@" ;;
esac
exec "$BIN/pnc-enter" ctl "\$@"
EOF
  chmod 755 "$BIN/pnc-enter.new" "$BIN/pnc-exec.new"
  mv -f "$BIN/pnc-enter.new" "$BIN/pnc-enter"; mv -f "$BIN/pnc-exec.new" "$BIN/pnc-exec"
  local c
  for c in srun sbatch salloc sinfo squeue scontrol scancel sacct sattach sbcast sstat sprio sshare sdiag strigger sreport; do
    ln -sfn pnc-exec "$BIN/$c"
  done
  # SLURM_CONF is deliberately NOT exported here: a plain /usr/bin/srun in the root namespace with
  # our SLURM_CONF would send its packets for $NET.1 to the default gateway.  The wrappers set it.
  cat >"$BASE/cluster.env" <<EOF
# source me: SLURM clients of the namespace cluster (they re-exec themselves on the login node "ctl")
export PATH=$BIN:\${PATH}
export PNC_IFNAME=$IFNAME     # e.g. GLOO_SOCKET_IFNAME=\$PNC_IFNAME, mpirun --mca btl_tcp_if_include \$PNC_IFNAME
EOF
}

# ---------------------------------------------------------------- network
net_ok() {
  local h
  ns_exists "$NSP-sw" && ip -n "$NSP-sw" link show "$BR" >/dev/null 2>&1 || return 1
  for h in $(all_hosts); do
    ip -n "$(ns_of "$h")" -4 addr show dev "$IFNAME" 2>/dev/null | grep -q "inet $(ip_of "$h")/24" || return 1
  done
  # no namespaces left over from a run with more NODES
  [ -s "$NSLIST" ] && for h in $(sort -u "$NSLIST"); do
    case " sw $(all_hosts | tr '\n' ' ')" in *" ${h#"$NSP-"} "*) ;; *) ns_exists "$h" && return 1 ;; esac
  done
  return 0
}
ns_add() {  # ns_add <ns>: create, lo up, no IPv6 (keeps gloo/MPI on the one IPv4 address)
  ns_exists "$1" && die "netns $1 exists but was not recorded in $NSLIST (not ours?) - remove it by hand: ip netns del $1"
  ip netns add "$1"; echo "$1" >>"$NSLIST"
  ip netns exec "$1" sh -c 'echo 1 >/proc/sys/net/ipv6/conf/all/disable_ipv6; echo 1 >/proc/sys/net/ipv6/conf/default/disable_ipv6' 2>/dev/null || true
  ip -n "$1" link set lo up
}
net_up() {
  local h ns
  # safety net: while the cluster exists the root namespace answers "unreachable" for its subnet, so a client
  # started in the wrong namespace fails at once instead of sending a packet out of the machine's own interface
  ip route replace unreachable "$NET.0/24" 2>/dev/null || true
  ns_add "$NSP-sw"
  ip -n "$NSP-sw" link add "$BR" type bridge stp_state 0 forward_delay 0
  ip -n "$NSP-sw" link set "$BR" up
  for h in $(all_hosts); do
    ns=$(ns_of "$h"); ns_add "$ns"
    ip -n "$NSP-sw" link add "v-$h" type veth peer name "$IFNAME" netns "$ns"
    ip -n "$NSP-sw" link set "v-$h" master "$BR" up
    ip -n "$ns" addr add "$(ip_of "$h")/24" dev "$IFNAME"
    ip -n "$ns" link set "$IFNAME" up
    [ -n "$LINK_RATE" ] && link_rate "$h" "$LINK_RATE"
  done
  return 0
}
net_down() {
  local ns i
  [ -s "$NSLIST" ] || return 0
  for ns in $(sort -u "$NSLIST"); do
    case $ns in "$NSP"-*) ;; *) continue ;; esac
    ns_exists "$ns" || continue
    if [ -n "$(ns_pids "$ns")" ]; then
      log "leftover processes in $ns:"; kill_ns_pids "$ns" TERM
      for i in $(seq 25); do [ -z "$(ns_pids "$ns")" ] && break; sleep 0.2; done
      kill_ns_pids "$ns" KILL; sleep 0.2
    fi
    ip netns del "$ns" && log "deleted netns $ns"
  done
  rm -f "$NSLIST"
  ip route del unreachable "$NET.0/24" 2>/dev/null || true
}
link_rate() {  # link_rate <host> <rate|off>: token bucket on both ends of the host's veth
  local h=$1 r=$2 ns; ns=$(ns_of "$h")
  if [ "$r" = off ]; then
    ip netns exec "$ns" tc qdisc del dev "$IFNAME" root 2>/dev/null || true
    ip netns exec "$NSP-sw" tc qdisc del dev "v-$h" root 2>/dev/null || true
  else
    ip netns exec "$ns" tc qdisc replace dev "$IFNAME" root tbf rate "$r" burst 256kb latency 200ms
    ip netns exec "$NSP-sw" tc qdisc replace dev "v-$h" root tbf rate "$r" burst 256kb latency 200ms
  fi
}

# ---------------------------------------------------------------- daemons
stop_all() {
  local n
  if alive "$RUN/slurmctld.pid" slurmctld; then
    local jobs; jobs=$("$BIN/squeue" -h -o %A 2>/dev/null | tr '\n' ' ' || true)
    if [ -n "${jobs// /}" ]; then
      log "cancelling jobs: $jobs"; "$BIN/scancel" $jobs 2>/dev/null || true
      for n in $(seq 50); do [ -z "$("$BIN/squeue" -h -o %A -t all 2>/dev/null | head -1)" ] && break; sleep 0.2; done
    fi
  fi
  # all slurm daemons in parallel (each takes ~2 s to exit on TERM), munged last
  stop_many $(for f in "$RUN"/slurmd-*.pid; do [ -e "$f" ] && echo "$f:slurmd"; done) "$RUN/slurmctld.pid:slurmctld"
  stop_many "$MUNGE_DIR/munged.pid:munged"
}

case "${1:-start}" in start|stop)   # serialize concurrent start/stop; daemons get 9>&- so they don't hold it
  mkdir -p "$BASE"; exec 9>"$BASE/.lock"; flock -w 180 9 || die "another start/stop holds $BASE/.lock" ;;
esac
if [ "${1:-start}" = stop ]; then
  log "stop"
  stop_all
  net_down
  left=$(ip netns list 2>/dev/null | awk -v p="$NSP-" 'index($1,p)==1' | tr '\n' ' ')
  [ -n "$left" ] && log "WARNING: namespaces with our prefix still present (not created by this script?): $left"
  log "stopped"
  exit 0
fi
case "${1:-start}" in
  status)
    echo "namespaces: $(ip netns list | tr '\n' ' ')"
    for f in "$MUNGE_DIR/munged.pid:munged" "$RUN/slurmctld.pid:slurmctld" $(for n in $(node_names); do echo "$RUN/slurmd-$n.pid:slurmd"; done); do
      pf=${f%:*}; c=${f##*:}; if alive "$pf" "$c"; then echo "$(basename "$pf" .pid): pid $(cat "$pf")"; else echo "$(basename "$pf" .pid): not running"; fi
    done
    alive "$RUN/slurmctld.pid" slurmctld && "$BIN/sinfo" -N -o '%N %t %c %G' || true
    exit 0 ;;
  exec) shift; exec "$BIN/pnc-exec" "$@" ;;
  link) [ $# = 3 ] || die "usage: $0 link NODE RATE|off"; link_rate "$2" "$3"; log "link $2: $3"; exit 0 ;;
  unplug|plug)   # pull / re-insert NODE's cable at the switch (network partition; processes keep running)
    [ $# = 2 ] || die "usage: $0 $1 NODE"; ns_exists "$NSP-sw" || die "cluster not started"
    ip -n "$NSP-sw" link set "v-$2" "$( [ "$1" = unplug ] && echo down || echo up )"; log "$1 $2"; exit 0 ;;
  kill-node)
    [ $# = 2 ] || die "usage: $0 kill-node NODE"; ns=$(ns_of "$2"); ns_exists "$ns" || die "no namespace $ns"
    log "power-off $2: SIGKILL everything in $ns"; kill_ns_pids "$ns" KILL; rm -f "$RUN/slurmd-$2.pid"; exit 0 ;;
  boot) ;;   # below, once start_slurmd is defined
  start) ;;
  *) die "usage: $0 [start|stop|status|exec CMD..|link NODE RATE|off|unplug NODE|plug NODE|kill-node NODE|boot NODE]" ;;
esac

# ================================================================ start
[ "$(id -u)" = 0 ] || die "must run as root"
[ "$NODES" -ge 1 ] && [ "$NODES" -le 200 ] || die "NODES must be 1..200"

# ---------------------------------------------------------------- 1. packages
PKGS="slurmctld slurmd slurm-client munge iproute2"
[ "$MPI_DEFAULT" = pmix ] && PKGS="$PKGS libpmix-dev"   # slurm's mpi_pmix dlopens .../pmix2/lib/libpmix.so (only in -dev)
missing=""
for p in $PKGS; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"; done
if [ -n "$missing" ]; then
  log "apt-get install:$missing"; export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq; apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
mkdir -p "$ETC" "$RUN" "$LOGD" "$STATE/spool" "$STATE/nodes" "$MUNGE_DIR" "$NODELOCAL"
chmod 1777 "$NODELOCAL"

# ---------------------------------------------------------------- 2. config (+ /etc/hosts for the namespaces)
GRES_TYPES=""; GRES_NODE=""
if [ "$FAKE_GPUS" -gt 0 ]; then
  GRES_TYPES="GresTypes=gpu"; GRES_NODE="Gres=gpu:$FAKE_GPUS"
  mkdir -p "$BASE/fakedev"
  for i in $(seq 0 $((FAKE_GPUS - 1))); do   # gres/gpu File= must be char/block devices
    [ -c "$BASE/fakedev/nvidia$i" ] || { rm -f "$BASE/fakedev/nvidia$i"; mknod -m 666 "$BASE/fakedev/nvidia$i" c 1 3; }
  done
fi
NEWCONF=$(mktemp); NEWGRES=$(mktemp); NEWHOSTS=$(mktemp)
{
  echo "127.0.0.1 localhost"
  for h in $(all_hosts); do echo "$(ip_of "$h") $h"; done
  # torch's TCPStore accepts on a dual-stack socket and reverse-resolves the peer as ::ffff:a.b.c.d;
  # glibc's files backend has no such entry, DNS is unreachable here -> harmless c10d warning
  # "The hostname of the client socket cannot be retrieved. err=-3".  HOSTS_V4MAPPED=1 adds the
  # mapped forms (silences it) but then `hostname -i` prints two addresses.
  [ "${HOSTS_V4MAPPED:-0}" = 1 ] && for h in $(all_hosts); do echo "::ffff:$(ip_of "$h") $h"; done
  true
} >"$NEWHOSTS"
cat >"$NEWCONF" <<EOF
# generated by .ci/start-multinode.sh - $NODES nodes in network namespaces, no cgroups, no accounting
ClusterName=pneumo
SlurmctldHost=ctl($(ip_of ctl))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCK,cred_expire=$CRED_EXPIRE
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/%n
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmctldLogFile=$LOGD/slurmctld.log
SlurmdLogFile=$LOGD/slurmd-%n.log
TmpFS=$NODELOCAL
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
SlurmdTimeout=$SLURMD_TIMEOUT
InactiveLimit=0
MinJobAge=300
JobRequeue=1
KillWait=5
Waittime=0
MailProg=/bin/true
$GRES_TYPES
EOF
for n in $(node_names); do
  echo "NodeName=$n NodeHostname=$n NodeAddr=$(ip_of "$n") CPUs=$CPUS RealMemory=$MEM_MB $GRES_NODE State=UNKNOWN" >>"$NEWCONF"
done
echo "PartitionName=debug Nodes=$(nodes_range) Default=YES MaxTime=INFINITE State=UP" >>"$NEWCONF"
[ "$FAKE_GPUS" -gt 0 ] && printf 'AutoDetect=off\nNodeName=%s Name=gpu File=%s/fakedev/nvidia[0-%d]\n' "$(nodes_range)" "$BASE" $((FAKE_GPUS - 1)) >"$NEWGRES"
CHANGED=0
cmp -s "$NEWCONF" "$CONF" || { install -m 644 "$NEWCONF" "$CONF"; CHANGED=1; }
cmp -s "$NEWHOSTS" "$ETC/hosts" || { install -m 644 "$NEWHOSTS" "$ETC/hosts"; CHANGED=1; }
if [ -s "$NEWGRES" ]; then cmp -s "$NEWGRES" "$ETC/gres.conf" || { install -m 644 "$NEWGRES" "$ETC/gres.conf"; CHANGED=1; }
elif [ -e "$ETC/gres.conf" ]; then rm -f "$ETC/gres.conf"; CHANGED=1; fi
rm -f "$NEWCONF" "$NEWGRES" "$NEWHOSTS"
write_helpers
[ "$CHANGED" = 1 ] && log "config written to $ETC (changed)" || log "config unchanged"

# ---------------------------------------------------------------- 3. network namespaces
if [ "$CHANGED" = 1 ] || ! net_ok; then
  if ns_exists "$NSP-sw" || [ -s "$NSLIST" ]; then log "(re)building network"; stop_all; net_down; fi
  net_up
  log "network up: $(for h in $(all_hosts); do printf '%s=%s ' "$h" "$(ip_of "$h")"; done)(bridge $BR in netns $NSP-sw, no default route)"
  CTLD_FLAGS=-c
else
  for h in $(all_hosts); do ip -n "$NSP-sw" link set "v-$h" up; done   # re-plug anything unplugged
  log "network already up"
  [ "$CHANGED" = 1 ] && CTLD_FLAGS=-c || CTLD_FLAGS=""
fi

# ---------------------------------------------------------------- 4. munge (own key + socket; root netns, unix socket only)
chown munge:munge "$MUNGE_DIR"; chmod 0755 "$MUNGE_DIR"   # munged wants the socket dir o+x
[ -s "$MUNGE_KEY" ] || runuser -u munge -- mungekey --create --keyfile="$MUNGE_KEY"
if alive "$MUNGE_DIR/munged.pid" munged && munge -n -S "$MUNGE_SOCK" | unmunge -S "$MUNGE_SOCK" >/dev/null 2>&1; then
  log "munged already running (pid $(cat "$MUNGE_DIR/munged.pid"))"
else
  rm -f "$MUNGE_SOCK" "$MUNGE_SOCK.lock" "$MUNGE_DIR/munged.pid"
  runuser -u munge -- /usr/sbin/munged --socket="$MUNGE_SOCK" --key-file="$MUNGE_KEY" \
      --pid-file="$MUNGE_DIR/munged.pid" --log-file="$MUNGE_DIR/munged.log" --seed-file="$MUNGE_DIR/munged.seed" 9>&-
  for i in $(seq 50); do [ -S "$MUNGE_SOCK" ] && break; sleep 0.1; done
  munge -n -S "$MUNGE_SOCK" | unmunge -S "$MUNGE_SOCK" >/dev/null || die "munge self-test failed"
  log "munged started (pid $(cat "$MUNGE_DIR/munged.pid"))"
fi

# ---------------------------------------------------------------- 5. slurmctld on "ctl"
if alive "$RUN/slurmctld.pid" slurmctld; then
  log "slurmctld already running (pid $(cat "$RUN/slurmctld.pid"))"
else
  mkdir -p "$STATE/spool/ctld"
  # shellcheck disable=SC2086
  "$BIN/pnc-enter" ctl slurmctld $CTLD_FLAGS -f "$CONF" 9>&- || { tail -20 "$LOGD/slurmctld.log"; die "slurmctld failed to start"; }
  for i in $(seq 100); do "$BIN/scontrol" ping 2>/dev/null | grep -q UP && break; sleep 0.1; done
  "$BIN/scontrol" ping | grep -q UP || { tail -20 "$LOGD/slurmctld.log"; die "slurmctld not up"; }
  log "slurmctld started on ctl (pid $(cat "$RUN/slurmctld.pid"))${CTLD_FLAGS:+ (clean state)}"
fi

# ---------------------------------------------------------------- 6. one slurmd per node namespace
start_slurmd() {  # start_slurmd <node>: "boot" the node = start its slurmd inside its namespaces
  local n=$1 pf=$RUN/slurmd-$1.pid i
  # wipe node-local scratch unless something of a previous life still runs on the node
  [ -z "$(ns_pids "$(ns_of "$n")")" ] && rm -rf "$STATE/nodes/$n/tmp"
  mkdir -p "$STATE/spool/$n"
  "$BIN/pnc-enter" "$n" slurmd -f "$CONF" -N "$n" 9>&- || { tail -20 "$LOGD/slurmd-$n.log"; die "slurmd $n failed to start"; }
  for i in $(seq 50); do alive "$pf" slurmd && break; sleep 0.1; done
  alive "$pf" slurmd || { tail -20 "$LOGD/slurmd-$n.log"; die "slurmd $n did not start"; }
  log "slurmd $n started (pid $(cat "$pf"), $(ip_of "$n"))"
}
if [ "${1:-start}" = boot ]; then   # one node back, while jobs may hold the others (no smoke test)
  [ $# = 2 ] || die "usage: $0 boot NODE"
  ip -n "$NSP-sw" link set "v-$2" up
  alive "$RUN/slurmd-$2.pid" slurmd && stop_many "$RUN/slurmd-$2.pid:slurmd"
  start_slurmd "$2"
  for i in $(seq 150); do
    case $("$BIN/sinfo" -h -n "$2" -o %t) in
      idle|mix|alloc|comp) log "node $2 is back"; exit 0 ;;
      *"*"|down|drain*|drng|fail*) "$BIN/scontrol" update nodename="$2" state=resume 2>/dev/null || true ;;
    esac
    sleep 0.2
  done
  die "node $2 did not come back: $("$BIN/sinfo" -h -n "$2" -o '%t %E')"
fi
for n in $(node_names); do
  if alive "$RUN/slurmd-$n.pid" slurmd; then log "slurmd $n already running (pid $(cat "$RUN/slurmd-$n.pid"))"; else start_slurmd "$n"; fi
done

# ---------------------------------------------------------------- 7. wait for nodes, smoke test
rebooted=" "
for i in $(seq 150); do
  bad=$("$BIN/sinfo" -h -N -o '%N %t' 2>/dev/null | awk '$2 !~ /^(idle|mix|alloc|comp)$/ {print $1}' | sort -u | tr '\n' ' ')
  st=$("$BIN/sinfo" -h -N -o '%t' 2>/dev/null | wc -l)
  [ -z "$bad" ] && [ "$st" -ge "$NODES" ] && break
  for b in $bad; do
    s=$("$BIN/sinfo" -h -n "$b" -o %t)
    case $s in
      *"*")  # still "not responding" 2 s after start although its slurmd runs (e.g. it was unplugged and
             # marked DOWN; it only re-registers at the next ctld ping, up to SlurmdTimeout/3 later):
             # restart that slurmd once so it registers now
        if [ "$i" -ge 10 ] && [ "${rebooted#* "$b" }" = "$rebooted" ]; then
          log "node $b is '$s' -> restarting its slurmd"; rebooted="$rebooted$b "
          stop_many "$RUN/slurmd-$b.pid:slurmd"; start_slurmd "$b"
        fi ;;
      drain*|drng|inval|down|fail*) "$BIN/scontrol" update nodename="$b" state=resume 2>/dev/null || true ;;
    esac
  done
  sleep 0.2
done
[ -z "$bad" ] || { "$BIN/sinfo" -N; die "nodes not usable: $bad"; }
out=$(timeout 60 "$BIN/srun" -N"$NODES" -n"$NODES" -t 1 hostname | sort | tr '\n' ' ')
[ "$out" = "$(node_names | sort | tr '\n' ' ')" ] || die "smoke test: srun -N$NODES hostname gave '$out'"
log "ready: $("$BIN/sinfo" -h -o '%P %a %D nodes %t %c cpus/node %G') | srun -N$NODES hostname: $out"
echo "source $BASE/cluster.env    # PATH=$BIN:... then srun/sbatch/salloc/sinfo/... run on login node ctl; or: $BIN/pnc-exec CMD..."
