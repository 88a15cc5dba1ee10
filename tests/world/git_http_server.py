#!/usr/bin/env python3
"""Smart HTTP for git: `git http-backend` as a CGI program behind HTTP Basic authentication.

  git_http_server.py --root DIR --user USER --password SECRET [--tls-cert PEM --tls-key PEM]
                     [--moved OLD=NEW] [--delay SECONDS]
prints "listening on http://127.0.0.1:PORT" (https with a certificate); repositories under DIR
are served at /NAME.git. With --delay, each request is answered that many seconds late: a
remote that is slow but answers. With --moved, requests under /OLD.git are answered 301 with the same
path under /NEW.git, as GitHub answers for a renamed repository (NEW may be a URL: a move to
another origin).
A request without the right credentials gets 401 with a Basic challenge, as GitHub, GitLab and
Bitbucket answer token-protected repositories over HTTPS.

Control endpoint (not git's), answered at once: GET /fake/requests, JSON [[method, path,
authorized], ...], every git request so far.
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


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, fmt, *args):
        pass

    def authorized(self):
        expected = base64.b64encode(
            f"{self.server.args.user}:{self.server.args.password}".encode()
        ).decode()
        return self.headers.get("Authorization") == f"Basic {expected}"

    def handle_git(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/fake/requests":
            with self.server.lock:
                answer = json.dumps(self.server.requests).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)
            return
        if self.server.args.moved:
            old, new = self.server.args.moved.split("=", 1)
            if self.path.startswith(f"/{old}.git/"):
                self.send_response(301)
                # NEW is a name on this server, or a URL elsewhere (another origin).
                base = new if "://" in new else f"/{new}"
                self.send_header("Location", f"{base}.git/" + self.path[len(old) + 6 :])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        with self.server.lock:
            self.server.requests.append((self.command, self.path, self.authorized()))
        time.sleep(self.server.args.delay)
        if not self.authorized():
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
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
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = handle_git
    do_POST = handle_git


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--moved")
    parser.add_argument("--delay", type=float, default=0)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.args, server.lock, server.requests = args, threading.Lock(), []
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
