#!/usr/bin/env python3
"""A fake EC2 instance metadata service (IMDSv2) for tests and the demo.

It follows AWS's documented behaviour (the IMDS user guide, and aws/amazon-ec2-metadata-mock):
  - PUT /latest/api/token needs X-aws-ec2-metadata-token-ttl-seconds in 1..21600 (else 400),
    echoes that header in the response, and refuses requests carrying X-Forwarded-For (403).
  - With tokens required (the default here, as on IMDSv2-only instances), a GET without a token,
    or with an unknown or expired one, gets 401.
  - Tags in metadata are off unless configured: meta-data/tags/instance then answers 404.
  - Unknown paths answer 404; a disabled endpoint answers 403 to everything.

The world it describes comes from a JSON file (--state) and can be changed while it runs through
/fake/* control endpoints, which real IMDS does not have:
  POST /fake/state        merge a JSON object into the state (e.g. {"tags": {...}})
  POST /fake/expire-tokens make every issued token stale, as after an IMDS restart
  GET  /fake/requests     the requests served so far, as JSON lines "METHOD PATH STATUS"

State keys: instance_id, region, availability_zone, account_id, tags (object, or null for tags
in metadata disabled), tags_delay (seconds after start before tags appear), lifecycle_state,
spot_action (object or null), tokens_required (bool), disabled (bool), delay (seconds added to
every answer), fail_next (count of requests to answer with fail_status, 500 unless set: 503 and
429 are what a throttled or overloaded IMDS sends), expire_tokens_after (after this
many answered GETs every issued token goes stale once, as when IMDS restarts mid-boot).
"""

import argparse
import json
import secrets
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_TTL = 21600
DEFAULT_STATE = {
    "instance_id": "i-0123456789abcdef0",
    "region": "us-east-1",
    "availability_zone": "us-east-1a",
    "account_id": "123456789012",
    "tags": None,
    "tags_delay": 0,
    "lifecycle_state": "InService",
    "spot_action": None,
    "tokens_required": True,
    "disabled": False,
    "delay": 0,
    "fail_next": 0,
    "fail_status": 500,
    "expire_tokens_after": None,
}


class World:
    def __init__(self, state):
        self.lock = threading.Lock()
        self.state = dict(DEFAULT_STATE, **state)
        self.started = time.monotonic()
        self.tokens = {}  # token -> expiry (monotonic)
        self.requests = []

    def issue_token(self, ttl):
        token = secrets.token_urlsafe(40)
        with self.lock:
            self.tokens[token] = time.monotonic() + ttl
        return token

    def token_valid(self, token):
        with self.lock:
            expiry = self.tokens.get(token)
        return expiry is not None and time.monotonic() < expiry

    def count_answered_get(self):
        with self.lock:
            left = self.state["expire_tokens_after"]
            if left is None:
                return
            left -= 1
            self.state["expire_tokens_after"] = left if left > 0 else None
            if left <= 0:
                self.tokens.clear()

    def tags(self):
        with self.lock:
            tags, delay = self.state["tags"], self.state["tags_delay"]
        if tags is None:
            return None
        if time.monotonic() - self.started < delay:
            return {}
        return tags

    def metadata(self, path):
        """The body for a GET of /latest/<path>, or None for 404."""
        s = self.state
        if path == "meta-data/instance-id":
            return s["instance_id"]
        if path == "meta-data/placement/region":
            return s["region"]
        if path == "meta-data/placement/availability-zone":
            return s["availability_zone"]
        if path == "meta-data/autoscaling/target-lifecycle-state":
            return s["lifecycle_state"]
        if path == "meta-data/spot/instance-action":
            return None if s["spot_action"] is None else json.dumps(s["spot_action"])
        if path == "dynamic/instance-identity/document":
            return json.dumps(
                {
                    "accountId": s["account_id"],
                    "instanceId": s["instance_id"],
                    "region": s["region"],
                    "availabilityZone": s["availability_zone"],
                },
                indent=2,
            )
        if path == "meta-data/tags/instance" or path.startswith("meta-data/tags/instance/"):
            tags = self.tags()
            if tags is None:
                return None
            if path == "meta-data/tags/instance":
                # With tags enabled but none set (yet), real IMDS answers 200 with an empty body
                # (aws/amazon-ec2-metadata-mock#189); only disabled tags give 404.
                return "\n".join(sorted(tags))
            return tags.get(path[len("meta-data/tags/instance/"):])
        return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, a keep-alive client's delayed ACK
    # would add ~40 ms to every answer, which real IMDS does not.
    disable_nagle_algorithm = True
    server_version = "EC2ws"
    sys_version = ""

    def log_message(self, fmt, *args):
        pass

    @property
    def world(self):
        return self.server.world

    def answer(self, status, body="", headers=None):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)
        with self.world.lock:
            self.world.requests.append(f"{self.command} {self.path} {status}")

    def gate(self):
        """Faults common to every IMDS answer; True when one was sent."""
        with self.world.lock:
            state = self.world.state
            delay, disabled = state["delay"], state["disabled"]
            failing = state["fail_next"] > 0
            if failing:
                state["fail_next"] -= 1
            fail_status = state["fail_status"]
        if delay:
            time.sleep(delay)
        if disabled:
            self.answer(403, "Forbidden")
            return True
        if failing:
            self.answer(fail_status, "Too Many Requests" if fail_status == 429 else "Error")
            return True
        return False

    def read_body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def do_PUT(self):
        self.read_body()
        if self.path.startswith("/fake/"):
            return self.answer(404)
        if self.gate():
            return
        if self.path != "/latest/api/token":
            return self.answer(404, "Not Found")
        if "X-Forwarded-For" in self.headers:
            return self.answer(403, "Forbidden")
        ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
        try:
            ttl_seconds = int(ttl)
        except (TypeError, ValueError):
            return self.answer(400, "Bad Request")
        if not 1 <= ttl_seconds <= MAX_TTL:
            return self.answer(400, "Bad Request")
        token = self.world.issue_token(ttl_seconds)
        self.answer(200, token, {"X-aws-ec2-metadata-token-ttl-seconds": str(ttl_seconds)})

    def do_GET(self):
        if self.path == "/fake/requests":
            with self.world.lock:
                body = "\n".join(self.world.requests)
            return self.answer(200, body)
        if self.gate():
            return
        if not self.path.startswith("/latest/"):
            return self.answer(404, "Not Found")
        token = self.headers.get("X-aws-ec2-metadata-token")
        if token is not None and not self.world.token_valid(token):
            return self.answer(401, "Unauthorized")
        if token is None and self.world.state["tokens_required"]:
            return self.answer(401, "Unauthorized")
        body = self.world.metadata(self.path[len("/latest/"):].rstrip("/"))
        self.world.count_answered_get()
        if body is None:
            return self.answer(404, "Not Found")
        self.answer(200, body)

    def do_POST(self):
        body = self.read_body()
        if self.path == "/fake/state":
            update = json.loads(body or b"{}")
            with self.world.lock:
                self.world.state.update(update)
            return self.answer(200, "ok")
        if self.path == "/fake/expire-tokens":
            with self.world.lock:
                self.world.tokens.clear()
            return self.answer(200, "ok")
        self.answer(405, "Method Not Allowed")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--state", help="JSON file with the initial state")
    args = parser.parse_args()
    state = {}
    if args.state:
        with open(args.state) as f:
            state = json.load(f)
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    server.world = World(state)
    # The first line tells the caller where to connect.
    print(f"listening on http://{args.host}:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
