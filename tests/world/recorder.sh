#!/bin/sh
# The sample service: records what it was started with into OUTDIR, so tests can compare it with
# what bootagent was meant to give it. With --stay it keeps running, as a real service would.
#   recorder.sh OUTDIR [--stay]
set -eu
out=$1
env -0 > "$out/env.tmp" && mv "$out/env.tmp" "$out/env"
pwd > "$out/cwd"
id -u > "$out/uid"
cat VERSION > "$out/version" 2>/dev/null || echo none > "$out/version"
if [ "${2:-}" = "--stay" ]; then
    exec sleep infinity
fi
