#!/usr/bin/env bash
# Build a stand-in for the public `python:3.11-slim-bookworm` image from Debian's packages, for
# machines that cannot pull from Docker Hub (see the README, "Run with Docker"). Where the real
# image can be pulled, pull it instead: this one has Debian's Python 3.11.2, not the official build.
# It trusts the host's CA bundle, so package downloads work behind a TLS-inspecting proxy.
#   usage: build-standin-base.sh [TAG]        (default python:3.11-slim-bookworm)
set -euo pipefail
tag=${1:-python:3.11-slim-bookworm}
docker=${DOCKER:-/usr/bin/docker}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

bundle=/etc/ssl/certs/ca-certificates.crt
[ -s "$bundle" ] || { echo "no CA bundle at $bundle: install ca-certificates" >&2; exit 1; }

echo "building the stand-in base image $tag with mmdebstrap (about a minute)" >&2
mmdebstrap --quiet --variant=minbase \
    --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
    --customize-hook="cat $bundle > \"\$1/etc/ssl/certs/ca-certificates.crt\"" \
    --customize-hook='rm -f "$1/usr/lib/python3.11/EXTERNALLY-MANAGED"' \
    --customize-hook='rm -rf "$1/var/lib/apt/lists/"* "$1/var/cache/apt/"*' \
    bookworm "$work/rootfs.tar"

"$docker" import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'LABEL org.opencontainers.image.description="stand-in for python:3.11-slim-bookworm, Debian python3 3.11.2"' \
    --change 'CMD ["python3"]' \
    "$work/rootfs.tar" "$tag" >/dev/null
echo "built $tag" >&2
