# Sourced by the benchmarks: the CPU a git server spent, read from outside.
# inetd.py runs a git daemon per connection and git_http_server.py a git http-backend per
# request, and each reaps its children, so their CPU adds up in the server's cutime and cstime
# (/proc/PID/stat, fields 16 and 17).

# The world's git server (inetd.py running git daemon) among WORLD_PIDS.
world_git_daemon_pid() {
    for pid in ${WORLD_PIDS:-}; do
        grep -qa git-daemon "/proc/$pid/cmdline" 2>/dev/null && echo "$pid"
    done | head -n1
}

# git_server_cpu_ms PID URL: the CPU (ms) of the children server PID has reaped so far; URL is
# one of its repositories.
git_server_cpu_ms() {
    # One more connection makes inetd.py reap the daemons that ended before it.
    git ls-remote "$2" >/dev/null
    git ls-remote "$2" >/dev/null
    awk -v hz="$(getconf CLK_TCK)" '{print ($16 + $17) * 1000 / hz}' "/proc/$1/stat"
}
