# The local emulated world: moto (Secrets Manager) and a git daemon on loopback ports.
# Sourced by scripts/test and scripts/demo after scripts/setup-world:
#   world_start CACHE STATE_DIR   starts both, exports BOOTAGENT_WORLD_* for tests
#   world_stop                    stops what world_start started
# The IMDS fake is started per test (or by the demo), since each instance has its own tags.

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

world_start() {
    local cache=$1 state=$2
    mkdir -p "$state/git"
    export BOOTAGENT_WORLD_PYTHON=$cache/venv/bin/python
    export BOOTAGENT_WORLD_ROOTFS=$cache/rootfs
    export BOOTAGENT_WORLD_IMDS_FAKE=$PWD/tests/world/imds_fake.py
    export BOOTAGENT_WORLD_AWS_ERROR=$PWD/tests/world/aws_error_endpoint.py
    export BOOTAGENT_WORLD_ASG_FAKE=$PWD/tests/world/autoscaling_fake.py
    export BOOTAGENT_WORLD_GIT_HTTP=$PWD/tests/world/git_http_server.py
    export BOOTAGENT_WORLD_SSHD=/usr/sbin/sshd
    export BOOTAGENT_WORLD_PROXY=$PWD/tests/world/connect_proxy.py
    export BOOTAGENT_WORLD_NSPAWN=$PWD/tests/world/nspawn.sh
    export BOOTAGENT_WORLD_RECORDER=$PWD/tests/world/recorder.sh

    local moto_port git_port
    moto_port=$(free_port)
    "$cache/venv/bin/moto_server" -H 127.0.0.1 -p "$moto_port" >"$state/moto.log" 2>&1 &
    WORLD_PIDS="$!"
    export BOOTAGENT_WORLD_MOTO=http://127.0.0.1:$moto_port

    git_port=$(free_port)
    # The daemon itself, not the git wrapper, so that world_stop's kill reaches it.
    "$(git --exec-path)/git-daemon" --reuseaddr --export-all --base-path="$state/git" --listen=127.0.0.1 \
        --port="$git_port" "$state/git" >"$state/git-daemon.log" 2>&1 &
    WORLD_PIDS="$WORLD_PIDS $!"
    export BOOTAGENT_WORLD_GIT_ROOT=$state/git
    export BOOTAGENT_WORLD_GIT_URL=git://127.0.0.1:$git_port

    wait_for_port "$moto_port" moto
    wait_for_port "$git_port" "git daemon"
}

world_stop() {
    # shellcheck disable=SC2086
    kill ${WORLD_PIDS:-} 2>/dev/null || true
    WORLD_PIDS=""
}
