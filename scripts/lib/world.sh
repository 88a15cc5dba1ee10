# The local emulated world: moto (Secrets Manager) and a git daemon on loopback ports, each bound
# by the server itself (port 0) and announced on its first line.
# Sourced by scripts/test and scripts/demo after scripts/setup-world:
#   world_start CACHE STATE_DIR   starts both, exports BOOTAGENT_WORLD_* for tests
#   world_stop                    stops what world_start started
# The IMDS fake is started per test (or by the demo), since each instance has its own tags.

# A loopback port nothing listens on (bound, then let go), for a service the demo or a benchmark
# starts. Tests never use it: another process can take such a port before its server binds it.
free_port() {
    "$BOOTAGENT_WORLD_PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for_port() {
    local port=$1 what=$2
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "world: $what did not start listening on port $port" >&2
    return 1
}

# start_listening WHAT LOG CMD...: starts CMD, a server that binds a free port itself and prints
# "listening on URL" first, in the background (its stderr into LOG); waits for that line, then
# sets LISTENING_URL. The port is the server's from that line on: no window for another process.
start_listening() {
    local what=$1 log=$2 line=""
    shift 2
    "$@" >"$log.url" 2>"$log" &
    local pid=$!
    WORLD_PIDS="${WORLD_PIDS:-} $pid"
    for _ in $(seq 1200); do
        if read -r line <"$log.url" && [ -n "$line" ]; then
            LISTENING_URL=${line#listening on }
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "world: $what exited before it listened:" >&2
            cat "$log" >&2
            return 1
        fi
        sleep 0.05
    done
    echo "world: $what did not listen within 60 s" >&2
    return 1
}

world_start() {
    local cache=$1 state=$2
    mkdir -p "$state/git"
    export BOOTAGENT_WORLD_PYTHON=$cache/venv/bin/python
    export BOOTAGENT_WORLD_ROOTFS=$cache/rootfs
    export BOOTAGENT_WORLD_ROOTFS_CLOUD_INIT=$cache/rootfs-cloud-init
    export BOOTAGENT_WORLD_ROOTFS_NGINX=$cache/rootfs-nginx
    export BOOTAGENT_WORLD_IMDS_FAKE=$PWD/tests/world/imds_fake.py
    export BOOTAGENT_WORLD_AWS_ERROR=$PWD/tests/world/aws_error_endpoint.py
    export BOOTAGENT_WORLD_ASG_FAKE=$PWD/tests/world/autoscaling_fake.py
    export BOOTAGENT_WORLD_REGION_FRONT=$PWD/tests/world/region_front.py
    export BOOTAGENT_WORLD_GIT_HTTP=$PWD/tests/world/git_http_server.py
    export BOOTAGENT_WORLD_MOTO_SERVER=$PWD/tests/world/moto_server.py
    export BOOTAGENT_WORLD_INETD=$PWD/tests/world/inetd.py
    export BOOTAGENT_WORLD_DRIP=$PWD/tests/world/drip_server.py
    export BOOTAGENT_WORLD_SSHD=/usr/sbin/sshd
    export BOOTAGENT_WORLD_PROXY=$PWD/tests/world/connect_proxy.py
    export BOOTAGENT_WORLD_NSPAWN=$PWD/tests/world/nspawn.sh
    export BOOTAGENT_WORLD_RECORDER=$PWD/tests/world/recorder.sh

    start_listening moto "$state/moto.log" "$BOOTAGENT_WORLD_PYTHON" "$BOOTAGENT_WORLD_MOTO_SERVER"
    export BOOTAGENT_WORLD_MOTO=$LISTENING_URL

    # git daemon cannot bind port 0 and say which port it got: inetd.py holds a port and runs
    # the daemon (not the git wrapper, so that world_stop's kill reaches it) per connection.
    start_listening "git daemon" "$state/git-daemon.log" "$BOOTAGENT_WORLD_PYTHON" "$BOOTAGENT_WORLD_INETD" \
        "$(git --exec-path)/git-daemon" --inetd --log-destination=stderr --export-all \
        --base-path="$state/git" "$state/git"
    export BOOTAGENT_WORLD_GIT_ROOT=$state/git
    export BOOTAGENT_WORLD_GIT_URL=git://${LISTENING_URL#tcp://}
}

world_stop() {
    # shellcheck disable=SC2086
    kill ${WORLD_PIDS:-} 2>/dev/null || true
    WORLD_PIDS=""
}
