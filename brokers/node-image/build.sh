#!/usr/bin/env bash
# Build the node image ${REDY_NODE_IMAGE:-redy/node:1} from this machine's Debian python3 and
# mosquitto and the project's wheel. Idempotent: an image built from the same sources is kept
# (its label holds their hash); REDY_REBUILD_IMAGE=1 builds anew.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
image=${REDY_NODE_IMAGE:-redy/node:1}
python=${NODE_PYTHON:-/usr/bin/python3}
pip_python=${PIP_PYTHON:-$repo/.venv/bin/python}
# Distributions a node never imports (simulator, plots, recordings, web dashboard): left out.
exclude=${REDY_NODE_EXCLUDE:-numba matplotlib tqdm mcap starlette uvicorn}

die() { echo "node-image/build.sh: $*" >&2; exit 1; }
command -v docker >/dev/null || die "docker not found; install the Debian package docker.io (make deps)"
docker info >/dev/null 2>&1 || die "no Docker engine answers; start one with bash brokers/start-dockerd.sh"
[ -x "$python" ] || die "$python not found; install the Debian package python3 (make deps)"
[ -x "$pip_python" ] || die "$pip_python not found; run make venv"
for b in /usr/sbin/mosquitto /usr/bin/mosquitto_passwd; do
    [ -x "$b" ] || die "$b not found; install the Debian package mosquitto (make deps)"
done

# The sources the image is made of: rebuild only when they changed.
sources=$(cd "$repo" && find components pyproject.toml brokers/node-image -type f \
    ! -path '*/__pycache__/*' ! -path '*.egg-info/*' -print0 | sort -z | xargs -0 sha1sum \
    | sha1sum | cut -c1-16)
if [ "${REDY_REBUILD_IMAGE:-0}" != 1 ] && [ "$(docker image inspect -f \
    '{{index .Config.Labels "org.redy.sources"}}' "$image" 2>/dev/null || true)" = "$sources" ]; then
    echo "image $image is present (sources $sources)"
    exit 0
fi

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
root=$ctx/rootfs
pyver=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
site=$root/usr/lib/python3/dist-packages
# Merged /usr, as on Debian 12: /lib, /lib64, /bin and /sbin point into /usr.
mkdir -p "$root/usr/lib" "$root/usr/lib64" "$root/usr/bin" "$root/usr/sbin"
for d in lib lib64 bin sbin; do ln -s "usr/$d" "$root/$d"; done
mkdir -p "$root/etc" "$root/tmp" "$root/var/lib/redy" "$root/etc/redy" "$site"
chmod 1777 "$root/tmp"

copy() {  # copy a file and keep its path inside the image (resolving symlinks)
    mkdir -p "$root$(dirname "$1")"
    cp -L "$1" "$root$1"
}

# Debian's interpreter and its standard library, without tests, IDLE, Tk and ensurepip.
copy "$(readlink -f "$python")"
ln -s "$(basename "$(readlink -f "$python")")" "$root/usr/bin/python3"
stdlib=/usr/lib/python$pyver
mkdir -p "$root$stdlib"
tar -C "$stdlib" --exclude=test --exclude=tests --exclude=idlelib --exclude=tkinter \
    --exclude=turtledemo --exclude=ensurepip --exclude=lib2to3 --exclude=__pycache__ \
    --exclude=site-packages --exclude=dist-packages -cf - . | tar -C "$root$stdlib" -xf -

# mosquitto and mosquitto_passwd (render hashes the local listener's passwords with it).
copy /usr/sbin/mosquitto
copy /usr/bin/mosquitto_passwd

# The project's wheel and the packages it needs at run time, for this interpreter's ABI.
"$pip_python" -m pip wheel -q --no-deps -w "$ctx/wheel" "$repo" >"$ctx/pip.log" 2>&1 \
    || { cat "$ctx/pip.log" >&2; die "building the wheel failed"; }
wheel=$(ls "$ctx"/wheel/redy-*.whl)
"$pip_python" - "$repo/pyproject.toml" "$exclude" >"$ctx/requirements.txt" <<'PY'
import re, sys, tomllib
deps = tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]
skip = set(sys.argv[2].split())
for d in deps:
    name = re.split(r"[<>=!~ \[;]", d, maxsplit=1)[0].lower()
    if name not in skip:
        print(d)
PY
"$pip_python" -m pip install -q --no-compile --target "$site" --no-deps "$wheel"
rm -rf "$site/bin"  # the redy script of the wheel; the image runs python3 -m redy
"$pip_python" -m pip install -q --no-compile --target "$site" -r "$ctx/requirements.txt" \
    2>&1 | { grep -v "is ignored: it is neither" || true; } >&2
# Test suites and build helpers are not needed on a gateway.
find "$site" -depth -type d \( -name tests -o -name test -o -name __pycache__ \) -prune \
    -exec rm -rf {} +
rm -rf "$site"/bin "$site"/pip "$site"/setuptools "$site"/_distutils_hack
# Byte-compile once with the image's interpreter, so nodes start without compiling.
"$python" -m compileall -q -j 0 "$site" "$root$stdlib" >/dev/null 2>&1 || true

# Every shared library any binary or extension module links, with the dynamic loader.
find "$root" -type f \( -name '*.so' -o -name '*.so.*' \) >"$ctx/elves"
printf '%s\n' "$root/usr/bin/python$pyver" "$root/usr/sbin/mosquitto" "$root/usr/bin/mosquitto_passwd" >>"$ctx/elves"
while read -r elf; do
    ldd "$elf" 2>/dev/null | awk '/=> \// {print $3} /^[ \t]*\/.*ld-linux/ {print $1}' || true
done <"$ctx/elves" | sort -u | while read -r lib; do
    case $lib in "$root"/*) continue ;; esac  # bundled with a wheel, already in place
    [ -e "$root$lib" ] || copy "$lib"
done
for nss in /lib/x86_64-linux-gnu/libnss_files.so.2 /usr/lib/x86_64-linux-gnu/libnss_files.so.2 \
           /lib/aarch64-linux-gnu/libnss_files.so.2 /usr/lib/aarch64-linux-gnu/libnss_files.so.2; do
    if [ -e "$nss" ]; then copy "$nss"; fi
done
if [ -d /usr/share/zoneinfo ]; then  # time zones of device models and logs
    mkdir -p "$root/usr/share" && cp -a /usr/share/zoneinfo "$root/usr/share/"
fi

cat >"$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
mosquitto:x:1883:1883:mosquitto:/var/lib/redy:/sbin/nologin
PASSWD
cat >"$root/etc/group" <<'GROUP'
root:x:0:
mosquitto:x:1883:
GROUP
printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$root/etc/nsswitch.conf"
mkdir -p "$root/root"
cp "$here/Dockerfile" "$ctx/Dockerfile"

version=$(basename "$wheel" | cut -d- -f2)
echo "building $image (redy $version, python $pyver, mosquitto from $(dpkg-query -W -f '${Version}' mosquitto 2>/dev/null || echo '?'))"
DOCKER_BUILDKIT=0 docker build -q --label "org.redy.sources=$sources" \
    --label "org.redy.version=$version" -t "$image" "$ctx" >/dev/null
echo "built $image ($(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}'))"
