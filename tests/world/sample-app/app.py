"""The demo's sample service: answers GET / with what it was started with (secret names, not
values), so the demo shows the right branch, environment and secrets arrived."""

import json
import os
from http.server import BaseHTTPRequestHandler, HTTPServer

SECRET_NAMES = ("API_TOKEN", "GREETING")


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        with open("VERSION") as f:
            version = f.read().strip()
        body = json.dumps(
            {
                "service": os.environ.get("BOOTAGENT_SERVICE"),
                "environment": os.environ.get("BOOTAGENT_ENV"),
                "version": version,
                "greeting": os.environ.get("GREETING"),
                "secrets_present": [n for n in SECRET_NAMES if os.environ.get(n)],
                "user": os.getuid(),
                "cwd": os.getcwd(),
            },
            indent=2,
        ).encode() + b"\n"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        pass


HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
