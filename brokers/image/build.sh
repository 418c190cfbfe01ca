#!/usr/bin/env bash
# Build the local image ${REDY_MOSQUITTO_IMAGE:-redy/mosquitto:2} from this machine's Debian
# mosquitto binary. Idempotent: an existing image is kept unless REDY_REBUILD_IMAGE=1.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
image=${REDY_MOSQUITTO_IMAGE:-redy/mosquitto:2}
binary=${MOSQUITTO_BIN:-/usr/sbin/mosquitto}

if ! command -v docker >/dev/null; then
    echo "build.sh: docker not found; install the Debian package docker.io (make deps)" >&2
    exit 1
fi
if ! docker info >/dev/null 2>&1; then
    echo "build.sh: no Docker engine answers; start one with bash brokers/start-dockerd.sh" >&2
    exit 1
fi
if [ "${REDY_REBUILD_IMAGE:-0}" != 1 ] && docker image inspect "$image" >/dev/null 2>&1; then
    echo "image $image is present"
    exit 0
fi
if [ ! -x "$binary" ]; then
    echo "build.sh: $binary not found; install the Debian package mosquitto (make deps)" >&2
    exit 1
fi

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
root=$ctx/rootfs
mkdir -p "$root/usr/sbin" "$root/etc" "$root/mosquitto/config" "$root/mosquitto/data" \
    "$root/mosquitto/log" "$root/tmp"

copy() {  # copy a file and keep its path inside the image (resolving symlinks)
    local src=$1
    mkdir -p "$root$(dirname "$src")"
    cp -L "$src" "$root$src"
}
copy "$binary"
# The libraries the binary links, the dynamic loader, and the NSS module that reads /etc/passwd.
if ldd "$binary" | grep -q 'not found'; then
    echo "build.sh: $binary misses shared libraries:" >&2
    ldd "$binary" | grep 'not found' >&2
    exit 1
fi
for lib in $(ldd "$binary" | awk '/=>/ {print $3} /ld-linux/ {print $1}'); do
    copy "$lib"
done
for nss in /lib/x86_64-linux-gnu/libnss_files.so.2 /usr/lib/x86_64-linux-gnu/libnss_files.so.2 \
           /lib/aarch64-linux-gnu/libnss_files.so.2 /usr/lib/aarch64-linux-gnu/libnss_files.so.2; do
    if [ -e "$nss" ]; then copy "$nss"; fi
done
# The official image runs mosquitto as user mosquitto (uid 1883); our brokers' configs say
# which user to run as, so both users exist.
cat >"$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
mosquitto:x:1883:1883:mosquitto:/mosquitto:/sbin/nologin
PASSWD
cat >"$root/etc/group" <<'GROUP'
root:x:0:
mosquitto:x:1883:
GROUP
echo "passwd: files" >"$root/etc/nsswitch.conf"
echo "group: files" >>"$root/etc/nsswitch.conf"
cat >"$root/mosquitto/config/mosquitto.conf" <<'CONF'
# Default: like eclipse-mosquitto:2, local only and no anonymous access until configured.
log_dest stderr
persistence true
persistence_location /mosquitto/data/
CONF
cp "$here/Dockerfile" "$ctx/Dockerfile"

version=$({ "$binary" -h 2>/dev/null || true; } | head -n 1 | awk '{print $3}')
echo "building $image from $binary (mosquitto $version)"
DOCKER_BUILDKIT=0 docker build -q --label "org.redy.mosquitto-version=$version" -t "$image" "$ctx" \
    >/dev/null
echo "built $image"
