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

# A pid file left by an engine that did not stop cleanly (a machine restored from a snapshot
# keeps /var/run) names a pid that another process may now hold; dockerd then refuses to start
# ("pid file found") and the engine's containerd is taken for running. Such a file is removed;
# an engine that is really there gets 30 s to answer, then is stopped and started anew.
clear_pid_file() { # file, the process name the pid must have
    local file=$1 name=$2 pid
    [ -f "$file" ] || return 0
    pid=$(cat "$file" 2>/dev/null || true)
    if [[ $pid =~ ^[0-9]+$ ]] && [ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" = "$name" ]; then
        if [ "$name" = dockerd ]; then
            for _ in $(seq 1 30); do
                docker info >/dev/null 2>&1 && exit 0
                sleep 1
            done
            echo "start-dockerd: dockerd (pid $pid) does not answer; stopping it" >&2
        fi
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 10); do
            [ -d "/proc/$pid" ] || break
            sleep 1
        done
        kill -9 "$pid" 2>/dev/null || true
    else
        echo "start-dockerd: removing stale $file (pid ${pid:-none} is not $name)" >&2
    fi
    rm -f "$file"
}
clear_pid_file /var/run/docker.pid dockerd
clear_pid_file /var/run/docker/containerd/containerd.pid containerd

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
