#!/usr/bin/env python3
"""A fake of the EC2 Auto Scaling lifecycle-action API, which moto does not implement.

It speaks the AWS Query protocol as the real service does (API version 2011-01-01): a
form-encoded POST with Action=..., answered with XML in the autoscaling namespace. Implemented:
  CompleteLifecycleAction    AutoScalingGroupName, LifecycleHookName, LifecycleActionResult
                             (CONTINUE|ABANDON), InstanceId or LifecycleActionToken
  RecordLifecycleActionHeartbeat  the same names, without the result
Documented behaviour followed:
  - an instance/hook/group with no active lifecycle action: HTTP 400, ValidationError,
    "No active Lifecycle Action found with instance ID <id>";
  - a result other than CONTINUE or ABANDON: HTTP 400, ValidationError;
  - completing an action ends it: a second completion gets the ValidationError above;
  - throttling: HTTP 400 with code Throttling ("Rate exceeded"), here on demand.
Other actions answer 400 InvalidAction.

Control endpoints (not AWS's):
  POST /fake/actions   JSON {"group", "hook", "instance"}: a lifecycle action becomes active
  POST /fake/throttle  JSON {"count": N}: the next N calls are throttled
  GET  /fake/calls     JSON list of the calls received, in order, with their parameters
"""

import argparse
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

NS = "http://autoscaling.amazonaws.com/doc/2011-01-01/"


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.active = set()  # (group, hook, instance)
        self.calls = []
        self.throttle = 0


def error_xml(code, message, kind="Sender"):
    return (
        f'<ErrorResponse xmlns="{NS}"><Error><Type>{kind}</Type><Code>{code}</Code>'
        f"<Message>{message}</Message></Error><RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>"
    )


def ok_xml(action):
    return (
        f'<{action}Response xmlns="{NS}"><{action}Result/>'
        f"<ResponseMetadata><RequestId>{uuid.uuid4()}</RequestId></ResponseMetadata>"
        f"</{action}Response>"
    )


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, fmt, *args):
        pass

    def send(self, status, body, content_type="text/xml"):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/fake/calls":
            with self.server.state.lock:
                return self.send(200, json.dumps(self.server.state.calls), "application/json")
        self.send(404, "")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        state = self.server.state
        if self.path == "/fake/actions":
            a = json.loads(body)
            with state.lock:
                state.active.add((a["group"], a["hook"], a["instance"]))
            return self.send(200, "ok", "text/plain")
        if self.path == "/fake/throttle":
            with state.lock:
                state.throttle = json.loads(body)["count"]
            return self.send(200, "ok", "text/plain")
        params = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        action = params.get("Action", "")
        with state.lock:
            state.calls.append(params)
            if state.throttle > 0:
                state.throttle -= 1
                return self.send(400, error_xml("Throttling", "Rate exceeded"))
            if action not in ("CompleteLifecycleAction", "RecordLifecycleActionHeartbeat"):
                return self.send(400, error_xml("InvalidAction", f"Could not find operation {action}"))
            key = (
                params.get("AutoScalingGroupName"),
                params.get("LifecycleHookName"),
                params.get("InstanceId"),
            )
            if action == "CompleteLifecycleAction" and params.get(
                "LifecycleActionResult"
            ) not in ("CONTINUE", "ABANDON"):
                return self.send(
                    400,
                    error_xml("ValidationError", "LifecycleActionResult must be CONTINUE or ABANDON"),
                )
            if key not in state.active:
                return self.send(
                    400,
                    error_xml(
                        "ValidationError",
                        f"No active Lifecycle Action found with instance ID {key[2]}",
                    ),
                )
            if action == "CompleteLifecycleAction":
                state.active.discard(key)
        self.send(200, ok_xml(action))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.state = State()
    print(f"listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
