# shellcheck shell=bash disable=SC2034
# (SC2034 is off because the scripts that source this file use the variables.)
# Shared settings and helpers for scripts/setup, scripts/services,
# scripts/test and scripts/demo. Sourcing it only defines them.
#
# Everything the test setup creates lives under /var/lib/coppice (pool image,
# registry storage, logs, test.env) and /run/coppice (pid files), so that
# nothing else on the machine is touched or stopped by these scripts.

COPPICE_STATE_DIR=/var/lib/coppice
COPPICE_RUN_DIR=/run/coppice
COPPICE_LOG_DIR=$COPPICE_STATE_DIR/log
COPPICE_TEST_ENV=$COPPICE_STATE_DIR/test.env

# ZFS pool on a sparse file. The pool directory holds only the pool image,
# because `zpool import -d DIR` scans every file in DIR.
COPPICE_POOL=coppice
COPPICE_POOL_DIR=$COPPICE_STATE_DIR/pool
COPPICE_POOL_FILE=$COPPICE_POOL_DIR/$COPPICE_POOL.img
COPPICE_POOL_SIZE=${COPPICE_POOL_SIZE:-8G}
COPPICE_POOL_MOUNTPOINT=$COPPICE_STATE_DIR/mnt
COPPICE_JAILS_DATASET=${COPPICE_JAILS_DATASET:-$COPPICE_POOL/jails}
ZFS_FUSE_PIDFILE=$COPPICE_RUN_DIR/zfs-fuse.pid

# Local OCI registry, on loopback only.
COPPICE_REGISTRY_ADDR=${COPPICE_REGISTRY_ADDR:-127.0.0.1:5000}
REGISTRY_CONFIG=$COPPICE_STATE_DIR/registry.yml
REGISTRY_STORAGE=$COPPICE_STATE_DIR/registry
REGISTRY_PIDFILE=$COPPICE_RUN_DIR/registry.pid
REGISTRY_LOG=$COPPICE_LOG_DIR/registry.log

log() { printf '%s: %s\n' "${0##*/}" "$*"; }
warn() { printf '%s: warning: %s\n' "${0##*/}" "$*" >&2; }
die() {
    printf '%s: error: %s\n' "${0##*/}" "$*" >&2
    exit 1
}

require_root() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (it installs packages, mounts ZFS and writes /etc/containers)"
}

# Reject registry addresses outside 127.0.0.0/8, because the tests must
# never send traffic to another host.
validate_registry_addr() {
    [[ $COPPICE_REGISTRY_ADDR =~ ^127\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}:[0-9]{1,5}$ ]] ||
        die "COPPICE_REGISTRY_ADDR=$COPPICE_REGISTRY_ADDR is invalid; use 127.x.x.x:PORT (loopback only)"
}

# Print the pid from PIDFILE if that process is alive and runs EXE, and fail
# otherwise. Checking the executable guards against a stale pid file whose
# pid now belongs to another process.
live_pid() { # PIDFILE EXE
    local pid exe
    [[ -r $1 ]] || return 1
    pid=$(<"$1")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
    [[ $exe == "$2" ]] || return 1
    echo "$pid"
}

zfs_fuse_answering() {
    zpool list >/dev/null 2>&1
}

registry_answering() {
    curl -fsS --max-time 2 -o /dev/null "http://$COPPICE_REGISTRY_ADDR/v2/" 2>/dev/null
}

pool_imported() {
    zpool list -H -o name "$COPPICE_POOL" >/dev/null 2>&1
}

# Succeed if the imported pool's only vdev is our image file. zfs-fuse's
# zpool (0.7) has no `status -P`, but it prints file vdevs by full path.
pool_is_ours() {
    local vdevs
    vdevs=$(zpool status "$COPPICE_POOL" | awk '$1 ~ /^\// { print $1 }')
    [[ $vdevs == "$COPPICE_POOL_FILE" ]]
}

# Run a zfs or zpool command, retrying while the dataset is busy, because
# zfs-fuse keeps a mount busy for a moment after the last process leaves it.
zfs_retry_busy() {
    local attempt output
    for attempt in 1 2 3 4 5 6; do
        if output=$("$@" 2>&1); then
            return 0
        fi
        if [[ $output != *busy* ]]; then
            printf '%s\n' "$output" >&2
            return 1
        fi
        sleep "$attempt"
    done
    printf '%s\n' "$output" >&2
    return 1
}
