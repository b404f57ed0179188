#!/usr/bin/env bash
# Make the local stand-in for python:3.11-slim that the deploy tests build on: Debian bookworm from Debian's
# packages (debootstrap) plus python3, venv and pip, imported into buildah's storage as IMAGE.
# The registries that serve official images are unreachable here, so the tests cannot pull python:3.11-slim.
# Cached twice, so one CI run debootstraps at most once: the image in buildah's storage, and the root
# filesystem tarball under build/deploy/ (gitignored) from which the image is re-imported.
# Usage: scripts/build-base-image.sh [IMAGE]   (root; needs debootstrap and buildah)
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${1:-localhost/tnn-base:bookworm}
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=build/deploy
TARBALL=$CACHE/base-$SUITE.tar

if buildah inspect --type image "$IMAGE" >/dev/null 2>&1; then
    echo "base image $IMAGE already in buildah storage"
    exit 0
fi

if [[ ! -s $TARBALL ]]; then
    mkdir -p "$CACHE"
    rootfs=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    trap 'rm -rf "$rootfs"' EXIT
    # minbase + what python:3.11-slim offers: python3 with venv and pip, CA certificates, useradd (passwd)
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates,passwd \
        "$SUITE" "$rootfs" "$MIRROR"
    # Same hygiene as Debian's official slim images: no downloaded .debs or package lists
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -cf "$TARBALL.tmp" .
    mv "$TARBALL.tmp" "$TARBALL"
fi

ctr=$(buildah from scratch)
buildah add "$ctr" "$TARBALL" / >/dev/null
buildah config --env LANG=C.UTF-8 --cmd python3 "$ctr"
buildah commit --rm "$ctr" "$IMAGE" >/dev/null
echo "base image $IMAGE imported from $TARBALL"
