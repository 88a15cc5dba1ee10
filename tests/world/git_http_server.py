#!/usr/bin/env python3
"""Smart HTTP for git: `git http-backend` as a CGI program behind HTTP Basic authentication.

  git_http_server.py --root DIR --user USER --password SECRET [--tls-cert PEM --tls-key PEM]
                     [--moved OLD=NEW] [--throttle N[:SECONDS]] [--delay SECONDS]
prints "listening on http://127.0.0.1:PORT" (https with a certificate); repositories under DIR
are served at /NAME.git. With --delay, each git request is answered that many seconds late: a
remote that is slow but answers. With --moved, requests under /OLD.git are answered 301 with the same
path under /NEW.git, as GitHub answers for a renamed repository (NEW may be a URL: a move to
another origin).
With --throttle, the first N requests are answered 429 Too Many Requests (with
`Retry-After: SECONDS` when given), as a git host answers a client over its rate limit; the
requests after them are served.
A request without the right credentials gets 401 with a Basic challenge, as GitHub, GitLab and
Bitbucket answer token-protected repositories over HTTPS; so does a request with two
Authorization headers, which no valid request carries.

GET /fake/requests answers the requests so far as a JSON list of objects: method, path, status,
authorization (how many Authorization headers came), authorized (exactly the right one) and at
(seconds since the server started). No credential is recorded.
"""

import argparse
import base64
import json
import os
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Server(ThreadingHTTPServer):
    # A git host's listen backlog, not socketserver's 5: a fleet that connects at once (bench/fleet)
    # would otherwise meet dropped SYNs and the kernel's retries, seconds apart.
    request_queue_size = 1024


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, fmt, *args):
        pass

    def authorized(self):
        expected = base64.b64encode(
            f"{self.server.args.user}:{self.server.args.password}".encode()
        ).decode()
        return self.headers.get_all("Authorization") == [f"Basic {expected}"]

    def record(self, status):
        with self.server.lock:
            self.server.requests.append({
                "method": self.command,
                "path": self.path,
                "status": status,
                "authorization": len(self.headers.get_all("Authorization") or []),
                "authorized": self.authorized(),
                "at": round(time.monotonic() - self.server.started, 3),
            })

    def answer_empty(self, status, headers=()):
        self.record(status)
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def throttled(self):
        """Whether this request is one of the first N --throttle answers 429."""
        with self.server.lock:
            if self.server.throttle_left <= 0:
                return False
            self.server.throttle_left -= 1
        return True

    def do_GET(self):
        if self.path != "/fake/requests":
            return self.handle_git()
        with self.server.lock:
            body = json.dumps(self.server.requests).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def handle_git(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.throttled():
            seconds = self.server.retry_after
            return self.answer_empty(429, [("Retry-After", seconds)] if seconds else [])
        if self.server.args.moved:
            old, new = self.server.args.moved.split("=", 1)
            if self.path.startswith(f"/{old}.git/"):
                # NEW is a name on this server, or a URL elsewhere (another origin).
                base = new if "://" in new else f"/{new}"
                return self.answer_empty(
                    301, [("Location", f"{base}.git/" + self.path[len(old) + 6 :])]
                )
        time.sleep(self.server.args.delay)
        if not self.authorized():
            return self.answer_empty(401, [("WWW-Authenticate", 'Basic realm="git"')])
        path, _, query = self.path.partition("?")
        env = dict(
            os.environ,
            GIT_PROJECT_ROOT=self.server.args.root,
            GIT_HTTP_EXPORT_ALL="1",
            REQUEST_METHOD=self.command,
            PATH_INFO=path,
            QUERY_STRING=query,
            CONTENT_TYPE=self.headers.get("Content-Type", ""),
            CONTENT_LENGTH=str(len(body)),
            REMOTE_USER=self.server.args.user,
            GIT_PROTOCOL=self.headers.get("Git-Protocol", ""),
        )
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        out = subprocess.run(
            ["git", "http-backend"], input=body, env=env, capture_output=True, check=False
        ).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        status, headers = 200, []
        for line in head.decode().split("\r\n"):
            key, _, value = line.partition(": ")
            if key.lower() == "status":
                status = int(value.split()[0])
            elif key:
                headers.append((key, value))
        self.record(status)
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_POST = handle_git


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--moved")
    parser.add_argument("--throttle", default="0", metavar="N[:SECONDS]")
    parser.add_argument("--delay", type=float, default=0)
    args = parser.parse_args()
    server = Server(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.args, server.lock, server.requests = args, threading.Lock(), []
    server.started = time.monotonic()
    count, _, server.retry_after = args.throttle.partition(":")
    server.throttle_left = int(count)
    scheme = "http"
    if args.tls_cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        # A client that refuses the certificate fails the handshake in accept(), an OSError
        # the server loop ignores.
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    print(f"listening on {scheme}://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
