#!/usr/bin/env bash
# Build a Python base image with no image registry at all: debootstrap a minimal Debian, import
# it with `docker import`, then add Debian's python3 and python3-venv (docker/base/Dockerfile).
# Needs root, debootstrap, a Docker daemon and a Debian mirror (apt's HTTP is enough).
#
#   bash docker/base/build.sh [--tag gridrun-python:bookworm] [--suite bookworm]
#                             [--mirror http://deb.debian.org/debian] [--force]
#
# Idempotent: does nothing when the tag exists, unless --force.
set -euo pipefail

TAG=gridrun-python:bookworm
SUITE=bookworm
MIRROR=http://deb.debian.org/debian
FORCE=0
while (($#)); do
  case "$1" in
    --tag) TAG=$2; shift 2 ;;
    --suite) SUITE=$2; shift 2 ;;
    --mirror) MIRROR=$2; shift 2 ;;
    --force) FORCE=1; shift ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

here=$(cd "$(dirname "$0")" && pwd)
say() { printf '[base %s] %s\n' "$(date +%T)" "$*"; }

if [[ $FORCE == 0 ]] && docker image inspect "$TAG" >/dev/null 2>&1; then
  say "$TAG exists ($(docker image inspect -f '{{.Id}}' "$TAG" | cut -c1-19)); --force rebuilds it"
  exit 0
fi
[[ $(id -u) == 0 ]] || { echo "build.sh: debootstrap needs root: run it with sudo" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "build.sh: debootstrap is missing: apt-get install debootstrap" >&2; exit 1; }

rootfs_tag=gridrun-rootfs:$SUITE
start=$(date +%s)
work=$(mktemp -d /var/tmp/gridrun-rootfs.XXXXXX)
trap 'rm -rf "$work"' EXIT

say "debootstrap --variant=minbase $SUITE from $MIRROR"
debootstrap --variant=minbase "$SUITE" "$work/rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
  || { tail -n 30 "$work/debootstrap.log" >&2; echo "build.sh: debootstrap failed (log above)" >&2; exit 1; }
# Downloaded packages and indexes are not part of an image.
rm -rf "$work"/rootfs/var/cache/apt/archives/*.deb "$work"/rootfs/var/lib/apt/lists/*

say "docker import as $rootfs_tag"
tar --numeric-owner -C "$work/rootfs" -c . \
  | docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --message "debootstrap --variant=minbase $SUITE" - "$rootfs_tag" >/dev/null

say "adding python3 and python3-venv -> $TAG"
docker build --quiet --build-arg ROOTFS="$rootfs_tag" --label "org.opencontainers.image.title=$TAG" \
  --label "org.opencontainers.image.description=Debian $SUITE minbase with Debian's python3 and venv" \
  -t "$TAG" -f "$here/Dockerfile" "$here" >"$work/build.log" 2>&1 \
  || { tail -n 30 "$work/build.log" >&2; echo "build.sh: docker build failed (log above)" >&2; exit 1; }

say "built $TAG in $(($(date +%s) - start))s: $(docker run --rm "$TAG" python3 --version)," \
    "$(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}')"
