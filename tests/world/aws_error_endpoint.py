#!/usr/bin/env python3
"""An AWS JSON-protocol endpoint that answers every call with one configured error, for the
failure paths moto cannot produce (throttling, internal errors).

The error has the documented shape of the JSON protocol (awsJson1_1, used by Secrets Manager):
the HTTP status, an `x-amzn-ErrorType` header and a body {"__type": CODE, "message": TEXT}.

  aws_error_endpoint.py --code ThrottlingException --status 400 --message "Rate exceeded"
With --ec2 the error has the EC2 Query protocol's shape instead: an XML body
<Response><Errors><Error><Code>CODE</Code><Message>TEXT</Message></Error></Errors>…</Response>,
as EC2 answers (throttling: HTTP 503 RequestLimitExceeded).
With --date-offset SECONDS its Date header runs that far ahead (or behind), to stand for a
skewed local clock.
prints "listening on http://127.0.0.1:PORT"; GET /fake/requests returns the number of calls so far.
"""

import argparse
import json
import threading
import time
from html import escape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def date_time_string(self, timestamp=None):
        return super().date_time_string(time.time() + self.server.args.date_offset)

    def log_message(self, fmt, *args):
        pass

    def send(self, status, body, headers=()):
        data = body.encode()
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/fake/requests":
            with self.server.lock:
                return self.send(200, str(self.server.calls))
        self.send(404, "")

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.server.lock:
            self.server.calls += 1
        args = self.server.args
        if args.ec2:
            body = (
                '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
                f"<Code>{escape(args.code)}</Code><Message>{escape(args.message)}</Message>"
                "</Error></Errors><RequestID>00000000-0000-0000-0000-000000000000</RequestID>"
                "</Response>"
            )
            return self.send(args.status, body, [("Content-Type", "text/xml;charset=UTF-8")])
        body = json.dumps({"__type": args.code, "message": args.message})
        self.send(
            args.status,
            body,
            [
                ("Content-Type", "application/x-amz-json-1.1"),
                ("x-amzn-ErrorType", args.code),
                ("x-amzn-RequestId", "00000000-0000-0000-0000-000000000000"),
            ],
        )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--code", required=True)
    parser.add_argument("--status", type=int, default=400)
    parser.add_argument("--message", default="")
    parser.add_argument("--date-offset", type=float, default=0)
    parser.add_argument("--ec2", action="store_true")
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.args, server.calls, server.lock = args, 0, threading.Lock()
    print(f"listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
