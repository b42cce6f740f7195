#!/usr/bin/env bash
# Install the real servers the integration tests start: dnsmasq, BIND (named), etcd.
#
# Idempotent: installs with apt-get only the packages whose binary is missing,
# runs `apt-get update` once and only when something has to be installed, and
# keeps the packaged services from starting (a temporary policy-rc.d that is
# removed afterwards if this script created it). Nothing is started here.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

# binary -> package
declare -A PACKAGES=(
    [/usr/sbin/dnsmasq]=dnsmasq-base
    [/usr/sbin/named]=bind9
    [/usr/bin/etcd]=etcd-server
)

missing=()
for binary in "${!PACKAGES[@]}"; do
    name="$(basename "$binary")"
    if [ ! -x "$binary" ] && ! command -v "$name" >/dev/null 2>&1; then
        missing+=("${PACKAGES[$binary]}")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-servers: dnsmasq, named and etcd are already installed"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-servers: apt-get not found; install ${missing[*]} by hand" >&2
    exit 1
fi

POLICY=/usr/sbin/policy-rc.d
created_policy=0
restore_policy() {
    if [ "$created_policy" -eq 1 ]; then
        $SUDO rm -f "$POLICY"
    fi
}
trap restore_policy EXIT

if [ ! -e "$POLICY" ]; then
    # exit 101 = "action forbidden": invoke-rc.d will not start the packaged services
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
    $SUDO chmod +x "$POLICY"
    created_policy=1
fi

echo "install-servers: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null

# On a systemd host a unit may still have been enabled; make sure none runs.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now named dnsmasq etcd >/dev/null 2>&1 || true
fi
echo "install-servers: done"
