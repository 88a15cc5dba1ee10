#!/usr/bin/env bash
# A real systemd as PID 1 in a throwaway container, for systemd-mode tests and the demo.
#   nspawn.sh start NAME ROOTFS SHAREDIR   boots it (overlay over ROOTFS, SHAREDIR at /share);
#                                          prints the leader PID once systemd is up
#   nspawn.sh start-persistent NAME ROOT SHAREDIR
#                                          the same, writing to ROOT itself, so that what a
#                                          test installs survives a stop and a start
#   nspawn.sh run LEADER CMD...            runs CMD inside (all namespaces of the leader)
#   nspawn.sh stop NAME LEADER             powers it off and removes its cgroups
# Facts behind the recipe (--keep-unit, the cgroup move, no machinectl) are in
# shared/reference/TEST-WORLD.md.
set -euo pipefail

cgroup_dirs() {
    echo "/sys/fs/cgroup/unified/bootagent-$1" "/sys/fs/cgroup/systemd/bootagent-$1"
}

start() {
    boot "$1" "$2" "$3" --volatile=overlay
}

start-persistent() {
    boot "$1" "$2" "$3"
}

boot() {
    local name=$1 rootfs=$2 share=$3 log
    local volatile=("${@:4}")
    log=$(mktemp "/tmp/nspawn-$name.XXXXXX.log")
    (
        # The sandbox sits in the root cgroup, where nspawn refuses to run: give it its own.
        for dir in $(cgroup_dirs "$name"); do
            mkdir -p "$dir"
            echo "$BASHPID" > "$dir/cgroup.procs"
        done
        exec systemd-nspawn -q -b -D "$rootfs" -M "$name" --register=no --keep-unit \
            --console=passive "${volatile[@]}" --bind="$share:/share" </dev/null
    ) >"$log" 2>&1 &
    local nspawn=$! leader="" state=""
    # Up to 60 s: ~0.4 s alone, much longer beside a loaded test run.
    for _ in $(seq 600); do
        kill -0 "$nspawn" 2>/dev/null || { cat "$log" >&2; exit 1; }
        # nspawn forks an intermediate child before PID 1: wait for the one that became systemd.
        leader=$(pgrep -P "$nspawn" -x systemd | head -n1 || true)
        if [ -n "$leader" ]; then
            state=$(nsenter -t "$leader" -a -- systemctl is-system-running 2>/dev/null || true)
            case "$state" in running|degraded) echo "$leader"; return 0 ;; esac
        fi
        sleep 0.1
    done
    echo "nspawn: systemd in $name did not come up (leader: ${leader:-none}, state: ${state:-none})" >&2
    cat "$log" >&2
    kill "$nspawn" 2>/dev/null || true
    exit 1
}

run() {
    local leader=$1
    shift
    exec nsenter -t "$leader" -a -- "$@"
}

stop() {
    local name=$1 leader=$2
    nsenter -t "$leader" -a -- systemctl poweroff --no-block >/dev/null 2>&1 || true
    for _ in $(seq 100); do
        kill -0 "$leader" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$leader" 2>/dev/null || true
    for dir in $(cgroup_dirs "$name"); do
        # Remove the leaf cgroups first, then the container's own.
        find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null || true
    done
}

cmd=$1
shift
"$cmd" "$@"
