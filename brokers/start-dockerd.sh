#!/usr/bin/env bash
# Start a Docker engine for the container broker backend if none answers.
# No registry is reachable here and the machine has no bridge, so: vfs storage, no bridge, no
# iptables; containers use host networking on 127.0.0.1 ports.
set -euo pipefail
if docker info >/dev/null 2>&1; then
    exit 0
fi
if ! command -v dockerd >/dev/null 2>&1; then
    echo "start-dockerd: dockerd not found; install docker.io (make deps)" >&2
    exit 1
fi
log=${REDY_DOCKERD_LOG:-/tmp/redy-dockerd.log}
nohup dockerd --storage-driver=vfs --bridge=none --iptables=false --ip6tables=false \
    >"$log" 2>&1 </dev/null &
for _ in $(seq 1 60); do
    if docker info >/dev/null 2>&1; then
        echo "start-dockerd: dockerd is up (log: $log)"
        exit 0
    fi
    sleep 1
done
echo "start-dockerd: dockerd did not answer within 60 s; see $log" >&2
tail -n 20 "$log" >&2 || true
exit 1
