#!/usr/bin/env bash
# CI set-up for gridrun's Docker executor, on a Debian machine with no image registry:
#   1. installs docker.io and debootstrap from Debian when missing,
#   2. starts dockerd when no daemon answers, and waits for it (log: $DOCKERD_LOG),
#   3. builds the offline Python base image (docker/base/build.sh),
#   4. builds the torch and tensorflow images on that base (cached layers are reused),
#   5. removes gridrun images of earlier Dockerfiles or versions.
# Idempotent: a step already done is skipped, so a second run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
BASE_TAG=${GRIDRUN_BASE_IMAGE:-gridrun-python:bookworm}
DOCKERD_LOG=${DOCKERD_LOG:-/var/log/gridrun-dockerd.log}
say() { printf '[ci-setup %s] %s\n' "$(date +%T)" "$*"; }
t0=$(date +%s)

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if ((${#missing[@]})); then
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # The package's scripts try to start the service; with no init system that fails harmlessly.
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  say "starting dockerd (log: $DOCKERD_LOG)"
  # Its own session, so it outlives this script and the CI step that ran it.
  setsid dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
  for _ in $(seq 120); do
    docker info >/dev/null 2>&1 && break
    sleep 0.5
  done
  docker info >/dev/null 2>&1 || { tail -n 40 "$DOCKERD_LOG" >&2; say "dockerd did not come up (log above)"; exit 1; }
fi
say "docker daemon $(docker info -f '{{.ServerVersion}} ({{.Driver}}, cgroup {{.CgroupVersion}})')"

bash docker/base/build.sh --tag "$BASE_TAG"
"$PYTHON" -m runner images build --base-image "$BASE_TAG"
# Images of earlier Dockerfiles or versions: several GB each, on a disk the tests need.
"$PYTHON" -m runner images prune
say "done in $(($(date +%s) - t0))s"
