#!/usr/bin/env bash
# Import an OCI image as a jail template with the plain shell pipeline that a
# person would write by hand: buildah pull, buildah from and mount, zfs
# create, rsync, zfs snapshot, and cleanup. It is the reference that
# scripts/bench times the builder against, and the parity test checks that
# both make the same template tree.
#
# Usage: scripts/coppice-import-oci.sh NAME REF
#
#   NAME  template name; the dataset is $COPPICE_JAILS_DATASET/NAME-template
#   REF   registry reference without a transport, such as
#         127.0.0.1:5000/coppice/sample:14
#
# Environment: COPPICE_JAILS_DATASET (default zroot/jails).
#
# The working container is always removed. After a failure before the
# snapshot, the dataset this script created is destroyed again.
set -euo pipefail

if [[ $# -ne 2 ]]; then
    echo "usage: $0 NAME REF" >&2
    exit 2
fi
name=$1
ref=$2
dataset=${COPPICE_JAILS_DATASET:-zroot/jails}/$name-template

container=""
created=false
snapshot_taken=false

cleanup() {
    local status=$?
    if [[ -n $container ]]; then
        buildah umount "$container" >/dev/null || true
        buildah rm "$container" >/dev/null || true
    fi
    if $created && ! $snapshot_taken; then
        # zfs-fuse reports "dataset is busy" for a moment after the last writer.
        local attempt
        for attempt in 1 2 3 4 5; do
            zfs destroy -r "$dataset" && break
            sleep "$attempt"
        done
    fi
    exit "$status"
}
trap cleanup EXIT

image_id=$(buildah pull --quiet --os freebsd "docker://$ref")
container=$(buildah from --pull=never "$image_id")
mountpoint=$(buildah mount "$container")

zfs create "$dataset"
created=true
target=$(zfs get -H -o value mountpoint "$dataset")
rsync -aHAX --numeric-ids --delete "$mountpoint/" "$target/"

zfs snapshot "$dataset@base"
snapshot_taken=true
echo "template $name is ready: snapshot $dataset@base"
