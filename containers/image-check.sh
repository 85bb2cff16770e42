#!/usr/bin/env bash
# Build an image's root filesystem the way its Apptainer definition says, without Apptainer, and check it:
#
#   mmdebstrap (the def's From: debian:<suite>)  ->  %files copied in  ->  %post in a chroot (/proc /dev /sys bound)
#   -> %environment, %runscript, %test written to /.singularity.d as Apptainer does -> %test run inside
#   -> a job inside, offline (a network namespace with loopback only), with a data/runs bind at /scratch:
#      pneumo-hpc selftest, pneumo-hpc env --json --init, synth + preprocess, 2-rank gloo DDP under torchrun
#   -> mksquashfs the root -> a SIF assembled with siftool (definition + squashfs system partition) -> siftool list
#
# The definition is read from the .def file (containers/def_sections.py), so the check follows the file.
# Running the SIF itself needs Apptainer (make sif / make sif-cpu); see docs/containers.md.
#
# Knobs: DEF (containers/pneumo-hpc-cpu.def), WORK (build/image-check), MKSQUASHFS_ARGS ("-comp gzip -Xcompression-level 1"),
#        NO_SIF=1 (stop after the job), KEEP_ROOTS=1 (keep roots built from older keys).
# Needs root, mmdebstrap, squashfs-tools, siftool (Debian); installed with apt when missing.
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$SRC"
DEF=${DEF:-containers/pneumo-hpc-cpu.def}
WORK=${WORK:-build/image-check}
# gzip as apptainer build writes it, at level 1: the same format any Apptainer reads, packed several times faster
# than mksquashfs's default level 9 on a ~7 GB root (MKSQUASHFS_ARGS="-comp gzip" for that)
MKSQUASHFS_ARGS=${MKSQUASHFS_ARGS:--comp gzip -Xcompression-level 1}
SECTIONS="python3 $SRC/containers/def_sections.py"

say() { printf 'image-check: %s\n' "$*"; }
die() { printf 'image-check: ERROR %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (mmdebstrap, chroot and bind mounts); run it as root or in CI"
[ -f "$DEF" ] || die "no definition file $DEF"

# Every mount below lives in a private mount namespace of its own: whatever happens (even SIGKILL),
# none of them can outlive the check or show up on the host. The trap unmounts them in order anyway.
if [ -z "${IMAGE_CHECK_IN_NS:-}" ]; then
  exec env IMAGE_CHECK_IN_NS=1 unshare --mount --propagation private -- bash "${BASH_SOURCE[0]}" "$@"
fi

T0=$(date +%s)
stage() { say "[$(( $(date +%s) - T0 )) s] $*"; }

# ---- tools (Debian packages), the def's header -------------------------------------------------------------
need=""
command -v mmdebstrap >/dev/null || need="$need mmdebstrap"
command -v mksquashfs >/dev/null || need="$need squashfs-tools"
command -v siftool >/dev/null || need="$need siftool"
if [ -n "$need" ]; then
  say "apt-get install$need"
  apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >/dev/null
fi

bootstrap=$($SECTIONS "$DEF" header Bootstrap)
from=$($SECTIONS "$DEF" header From)
[ "$bootstrap" = docker ] || die "$DEF: Bootstrap: $bootstrap (only 'docker' with a Debian From: is rebuilt here)"
case "$from" in
  debian:*) suite=${from#debian:}; suite=${suite%-slim} ;;
  *) die "$DEF: From: $from is not a debian:<suite> image; only a machine with Apptainer (make sif) can build it" ;;
esac
[[ "$suite" =~ ^[a-z]+$ ]] || die "$DEF: cannot tell the Debian suite from From: $from"
name=$(basename "$DEF" .def)
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)

# ---- cache keys: the base tarball per suite; the post-installed root per def + install.sh + requirements -------
MIRROR_LINES=("deb http://deb.debian.org/debian $suite main"
              "deb http://deb.debian.org/debian $suite-updates main"
              "deb http://deb.debian.org/debian-security $suite-security main")
base_key=$(printf '%s\n' minbase "${MIRROR_LINES[@]}" | sha256sum | cut -c1-12)
root_key=$(cat "$DEF" containers/install.sh requirements.txt | sha256sum | cut -c1-12)
BASE_TAR=$WORK/base-$suite-$base_key.tar
ROOT=$WORK/root-$name-$root_key
# %files sources, by content (no __pycache__): a change re-copies them and re-runs %post on the cached root
mapfile -t FILES < <($SECTIONS "$DEF" files)
[ "${#FILES[@]}" -gt 0 ] || die "$DEF has no %files"
srcs=()
for pair in "${FILES[@]}"; do srcs+=("${pair%%$'\t'*}"); done
files_key=$(tar -c --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --exclude=__pycache__ \
              -f - "${srcs[@]}" | sha256sum | cut -c1-12)

# ---- mounts, with cleanup on any exit -------------------------------------------------------------------------
MOUNTS=()      # mount points, in the order mounted
CREATED=()     # bind targets this check created in the root (removed again so the image does not keep them)
cleanup() {
  local rc=$? i
  for (( i=${#MOUNTS[@]}-1; i>=0; i-- )); do
    umount -R "${MOUNTS[$i]}" 2>/dev/null || umount -R -l "${MOUNTS[$i]}" 2>/dev/null || \
      echo "image-check: WARNING could not unmount ${MOUNTS[$i]}" >&2
  done
  MOUNTS=()
  for (( i=${#CREATED[@]}-1; i>=0; i-- )); do
    if [ -d "${CREATED[$i]}" ]; then rmdir "${CREATED[$i]}" 2>/dev/null || true; else rm -f "${CREATED[$i]}"; fi
  done
  CREATED=()
  return $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

target() {  # target KIND PATH: make the bind target inside the root (dir or file), remembering what was new
  local t=$ROOT$2 parent new=() i
  if [ ! -e "$t" ] && [ ! -L "$t" ]; then
    parent=$(dirname "$2")
    while [ ! -e "$ROOT$parent" ]; do new+=("$ROOT$parent"); parent=$(dirname "$parent"); done
    for (( i=${#new[@]}-1; i>=0; i-- )); do CREATED+=("${new[$i]}"); done  # shallowest first: removed last
    mkdir -p "$(dirname "$t")"
    if [ "$1" = dir ]; then mkdir "$t"; else : >"$t"; fi
    CREATED+=("$t")
  fi
}
bind() {  # bind [ro] HOSTPATH ROOTPATH
  local ro=""
  if [ "$1" = ro ]; then ro=1; shift; fi
  [ -e "$1" ] || return 0
  if [ -d "$1" ]; then target dir "$2"; else target file "$2"; fi
  mount --rbind "$1" "$ROOT$2"
  MOUNTS+=("$ROOT$2")
  [ -z "$ro" ] || mount -o remount,bind,ro "$ROOT$2"
}
mount_system() {  # what Apptainer provides inside a build or a run
  bind /proc /proc
  bind /sys /sys
  bind /dev /dev
  bind ro /etc/resolv.conf /etc/resolv.conf
  bind ro /etc/hosts /etc/hosts
  mkdir -p "$WORK/tmp"
  chmod 1777 "$WORK/tmp"  # apt's _apt user and any job user write there
  bind "$WORK/tmp" /tmp
}
mount_build_caches() {  # bounded downloads: the host's apt archive, pip configuration, local wheel indexes, CA bundle
  bind /var/cache/apt/archives /var/cache/apt/archives
  # the host's CA bundle (what PIP_CERT names) beside the root's own, not over it: the root's ca-certificates
  # package rewrites /etc/ssl/certs/ca-certificates.crt when %post installs it
  bind ro "$HOST_CA" "$ROOT_CA"
  local d
  for d in /etc/xdg/pip /etc/pip.conf $(pip_local_dirs); do bind ro "$d" "$d"; done
  # the host user's pip configuration (here: find-links and the file:// indexes) as root's inside
  for d in .config/pip/pip.conf .pip/pip.conf; do bind ro "${HOME:?}/$d" "/root/$d"; done
}
pip_local_dirs() {  # file:// indexes and find-links directories named by the host's pip configuration
  { pip3 config list 2>/dev/null || true; env | grep -E '^PIP_(FIND_LINKS|EXTRA_INDEX_URL|INDEX_URL)=' || true; } |
    grep -oE "(file://)?/[^' ]+" | sed 's|^file://||' | while read -r p; do
      case "$p" in */simple) p=${p%/simple} ;; esac
      case "$p" in /etc/*) continue ;; esac
      [ -d "$p" ] && echo "$p"
    done | sort -u
}
unmount_all() { cleanup; }

# the environment a build step or the container sees: nothing of the host's shell but what Apptainer passes
ENV_BASE=(HOME=/root USER=root LANG=C.UTF-8 TERM=dumb PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
HOST_CA=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
ROOT_CA=/run/image-check/host-ca-certificates.crt
[ -f "$HOST_CA" ] || die "no host CA bundle at $HOST_CA (set PIP_CERT)"
ENV_PIP=(PIP_CERT="$ROOT_CA")  # the environment beats the bound pip.conf's cert=
for v in PIP_FIND_LINKS PIP_DEFAULT_TIMEOUT PIP_DISABLE_PIP_VERSION_CHECK PIP_INDEX_URL PIP_EXTRA_INDEX_URL; do
  [ -z "${!v:-}" ] || ENV_PIP+=("$v=${!v}")
done
in_root() {  # in_root SCRIPT_FILE(inside root) [env...]: /bin/sh -e, as Apptainer runs its scriptlets
  local script=$1; shift
  env -i "${ENV_BASE[@]}" "$@" chroot "$ROOT" /bin/sh -e "$script"
}

# ---- 1. the base root (mmdebstrap) ------------------------------------------------------------------------------
if [ ! -s "$BASE_TAR" ]; then
  stage "mmdebstrap --variant=minbase $suite (From: $from) -> $BASE_TAR"
  mmdebstrap --quiet --variant=minbase --format=tar "$suite" "$BASE_TAR.part" "${MIRROR_LINES[@]}"
  mv "$BASE_TAR.part" "$BASE_TAR"
else
  stage "base root: reusing $BASE_TAR"
fi

STAMP=$ROOT/.image-check-done
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$files_key" ]; then
  stage "root: reusing $ROOT (def, install.sh, requirements and %files unchanged; %post not re-run)"
else
  if [ ! -f "$STAMP" ]; then  # no root for this key, or one whose %post did not finish: start from the tarball
    rm -rf "${ROOT:?}" "$ROOT.part"
    if [ -z "${KEEP_ROOTS:-}" ]; then
      for old in "$WORK"/root-"$name"-*; do [ -d "$old" ] && { say "removing stale $old"; rm -rf "$old"; }; done
    fi
    stage "unpacking the base root into $ROOT"
    mkdir -p "$ROOT.part"
    tar -C "$ROOT.part" -xf "$BASE_TAR"
    mv "$ROOT.part" "$ROOT"
    fresh=1
  else
    stage "root: $ROOT exists, %files changed: copying them again and re-running %post on it"
    fresh=0
    rm -f "$STAMP"
  fi

  # ---- 2. %files, as listed (cp -a SRC DEST, parents created) ---------------------------------------------------
  stage "%files"
  for pair in "${FILES[@]}"; do
    s=${pair%%$'\t'*}; d=${pair#*$'\t'}
    [ -e "$s" ] || die "%files: $s does not exist in $SRC"
    mkdir -p "$ROOT$(dirname "$d")"
    rm -rf "${ROOT:?}$d"
    cp -a "$s" "$ROOT$d"
    printf '  %s -> %s\n' "$s" "$d"
  done

  # ---- 3. %post in the root ---------------------------------------------------------------------------------------
  mount_system
  mount_build_caches
  $SECTIONS "$DEF" section post >"$WORK/tmp/post.sh"
  stage "%post (chroot; host apt archive, pip configuration and local wheel indexes bound read-only)"
  t=$(date +%s)
  # %post appends the version labels to $APPTAINER_LABELS, which apptainer build points at /.build.labels
  rm -f "$ROOT/.build.labels"
  in_root /tmp/post.sh "${ENV_PIP[@]}" APPTAINER_LABELS=/.build.labels SINGULARITY_LABELS=/.build.labels \
    || die "%post failed (exit $?); the root is kept in $ROOT for a look"
  post_s=$(( $(date +%s) - t ))
  stage "%post done in $post_s s (fresh root: $fresh)"
  cleanup

  # ---- 4. /.singularity.d as Apptainer lays it out: the def, environment, runscript, test, labels ----------------
  sd=$ROOT/.singularity.d
  mkdir -p "$sd/env"
  cp "$DEF" "$sd/Singularity"
  { echo '#!/bin/sh'; echo '# custom environment shell code should follow'; echo;
    $SECTIONS "$DEF" section environment; } >"$sd/env/90-environment.sh"
  { echo '#!/bin/sh'; echo; $SECTIONS "$DEF" section runscript; } >"$sd/runscript"
  { echo '#!/bin/sh'; echo; $SECTIONS "$DEF" section test; } >"$sd/test"
  chmod 755 "$sd/env/90-environment.sh" "$sd/runscript" "$sd/test"
  { $SECTIONS "$DEF" section labels; cat "$ROOT/.build.labels"; } | python3 -c '
import json, sys
print(json.dumps(dict((l.split(None, 1) + [""])[:2] for l in sys.stdin.read().splitlines() if l.strip()), indent=1))' \
    >"$sd/labels.json"
  rm -f "$ROOT/.build.labels"
  echo "$files_key" >"$STAMP"
fi
du_root=$(du -sh --exclude=.image-check-done "$ROOT" | cut -f1)
stage "root filesystem: $du_root"

# ---- 5. %test, then a job, inside (offline) -------------------------------------------------------------------
JOB=$WORK/job
rm -rf "$JOB"; mkdir -p "$JOB"
mount_system
bind "$JOB" /scratch
cat >"$WORK/tmp/test.sh" <<'EOF'
. /.singularity.d/env/90-environment.sh
exec /bin/sh -e /.singularity.d/test
EOF
cat >"$WORK/tmp/job.sh" <<'EOF'
. /.singularity.d/env/90-environment.sh
cd /scratch
python3 - <<'PY'
import socket
for addr in (("151.101.0.223", 443), ("199.232.174.132", 80), ("1.1.1.1", 53)):  # PyPI, Debian mirror, DNS
    try:
        socket.create_connection(addr, timeout=3).close()
    except OSError as e:
        continue
    raise SystemExit(f"job: {addr} is reachable: the job is not offline")
print("job: no route out (loopback only)")
PY
pneumo-hpc selftest
pneumo-hpc env --json --init >/scratch/env.json
echo "job: env --json --init -> /scratch/env.json ($(wc -c </scratch/env.json) bytes)"
pneumo-hpc synth /scratch/rsna --n 40 --image-size 128 --seed 0
pneumo-hpc preprocess --rsna /scratch/rsna --out /scratch/prep --size 64 --yolo-size 64
OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node 2 -m pneumo_hpc train --data /scratch/prep \
  --strategy ddp --backend gloo --epochs 1 --batch-size 16 --out /scratch/runs/ddp
test -s /scratch/runs/ddp/metrics.json
python3 -c 'import json; m = json.load(open("/scratch/runs/ddp/metrics.json")); print("job: metrics.json world_size", m.get("world_size"), "strategy", m.get("strategy"))'
EOF

stage "%test (the def's, after its %environment)"
in_root /tmp/test.sh || die "%test failed"
stage "job in a fresh network namespace (loopback only): selftest, env --json --init, synth, preprocess, torchrun DDP"
routes_and_run='set -euo pipefail
ip link set lo up
[ -z "$(ip -4 route show)" ] || { echo "image-check: the namespace has a route out" >&2; exit 1; }
exec env -i "$@" chroot "$0" /bin/sh -e /tmp/job.sh'
unshare --net -- bash -c "$routes_and_run" "$ROOT" "${ENV_BASE[@]}" || die "the job inside the root failed"
cleanup
stage "job passed; outputs in $JOB"

# ---- 6. squashfs + SIF ---------------------------------------------------------------------------------------
if [ -n "${NO_SIF:-}" ]; then stage "NO_SIF set: no squashfs/SIF"; exit 0; fi
SQFS=$WORK/$name.sqfs
SIF=$WORK/$name.sif
if [ -f "$SIF" ] && [ "$(cat "$SIF.key" 2>/dev/null)" = "$root_key-$files_key" ]; then
  stage "SIF: reusing $SIF (same root)"
else
  rm -f "$SQFS" "$SIF" "$SIF.key"
  stage "mksquashfs $MKSQUASHFS_ARGS"
  t=$(date +%s)
  # shellcheck disable=SC2086
  mksquashfs "$ROOT" "$SQFS" -noappend -no-progress -quiet -e .image-check-done $MKSQUASHFS_ARGS
  stage "mksquashfs done in $(( $(date +%s) - t )) s"
  # Apptainer's layout: the definition (Def.FILE) and the root as the primary system partition, both in group 1
  siftool new "$SIF"
  siftool add "$SIF" "$DEF" --datatype 1 --groupid 1
  siftool add "$SIF" "$SQFS" --datatype 4 --parttype 2 --partfs 1 --partarch 2 --groupid 1
  rm -f "$SQFS"
  echo "$root_key-$files_key" >"$SIF.key"
fi
siftool list "$SIF"
stage "root $du_root; SIF $(du -h "$SIF" | cut -f1) ($(stat -c %s "$SIF") bytes): $SIF"
say "running this SIF needs Apptainer (not on this machine): apptainer test/exec $SIF;"
say "where Apptainer exists, 'make sif-cpu' / 'make sif' build the images with it (launch/launch.mk)."
stage "done"
