#!/usr/bin/env python3
"""An HTTP proxy that tunnels CONNECT requests, as corporate egress proxies do for HTTPS.

  connect_proxy.py
prints "listening on http://127.0.0.1:PORT". Every CONNECT target is recorded;
GET /fake/connects answers them as a JSON list. Any other request gets 405: only tunnels.
"""

import json
import select
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def do_CONNECT(self):
        host, _, port = self.path.rpartition(":")
        with self.server.lock:
            self.server.connects.append(self.path)
        try:
            upstream = socket.create_connection((host, int(port)), timeout=10)
        except OSError as e:
            self.send_error(502, str(e))
            return
        self.send_response(200, "Connection established")
        self.end_headers()
        self.tunnel(upstream)

    def tunnel(self, upstream):
        sockets = [self.connection, upstream]
        try:
            while True:
                readable, _, _ = select.select(sockets, [], [], 30)
                if not readable:
                    return
                for source in readable:
                    data = source.recv(65536)
                    if not data:
                        return
                    (upstream if source is self.connection else self.connection).sendall(data)
        finally:
            upstream.close()
            self.close_connection = True

    def do_GET(self):
        if self.path != "/fake/connects":
            self.send_error(405, "only CONNECT")
            return
        with self.server.lock:
            body = json.dumps(self.server.connects).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.lock, server.connects = threading.Lock(), []
    print(f"listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
