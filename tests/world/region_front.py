#!/usr/bin/env python3
"""One endpoint in front of several motos, one per AWS region, so that a test can stop one region
and keep another: the SDK is pointed at one endpoint URL whatever its region
(AWS_ENDPOINT_URL_SECRETS_MANAGER), and only the SigV4 credential scope in its Authorization
header says which region a request is for:

  Authorization: AWS4-HMAC-SHA256 Credential=AKID/20261205/us-west-2/secretsmanager/aws4_request, ...

  region_front.py --route us-east-1=http://127.0.0.1:PORT1 --route us-west-2=http://127.0.0.1:PORT2
prints "listening on http://127.0.0.1:PORT" once it accepts connections.

Each request (any method) goes to its region's route unchanged (method, path and query, headers
as sent, body), and the answer comes back unchanged (status, headers, body), but for the
hop-by-hop headers: the client's connection is kept alive (HTTP/1.1) whatever the backend's does,
and a chunked answer is passed on with a Content-Length instead.
A region whose backend does not answer (its moto was stopped), or that has no route, is a dead
endpoint: the front closes the client's connection without a word, so that the SDK sees a
connection failure, as with a region that is down, not an HTTP error.
A request with no SigV4 credential scope is answered as AWS does: HTTP 400 in the JSON protocol's
error shape, IncompleteSignatureException.
Request bodies are read by their Content-Length, which the SDKs send for the JSON protocol.

Control endpoint (not AWS's), without an Authorization header:
  GET /fake/requests   JSON {"us-east-1": 3, "us-west-2": 1}: the requests signed for each
                       region so far, those its backend did not answer included; each routed
                       region is there from the start, with 0
"""

import argparse
import http.client
import json
import re
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Credential=ACCESS_KEY/DATE/REGION/SERVICE/aws4_request: access key ids have no '/'.
CREDENTIAL_SCOPE = re.compile(
    r"\bCredential=[^/,\s]+/\d{8}/([a-z0-9-]+)/[a-z0-9-]+/aws4_request\b"
)

# Headers about one connection, not the message (RFC 9110, 7.6.1): each side has its own, and
# http.client hands the body over de-chunked.
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
}


def region_of(authorization):
    """The region of a SigV4 Authorization header's credential scope, or None."""
    if not authorization or not authorization.startswith("AWS4-HMAC-SHA256 "):
        return None
    match = CREDENTIAL_SCOPE.search(authorization)
    return match and match.group(1)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

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

    def __getattr__(self, name):
        # Every method is forwarded alike: one handler for whatever do_METHOD is looked up.
        if name.startswith("do_"):
            return self.serve
        raise AttributeError(name)

    def serve(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        authorization = self.headers.get("Authorization")
        if self.command == "GET" and self.path == "/fake/requests" and authorization is None:
            with self.server.lock:
                return self.send(200, json.dumps(self.server.requests))
        region = region_of(authorization)
        if region is None:
            message = (
                "Authorization header requires 'Credential' parameter. Authorization header "
                "requires 'Signature' parameter. Authorization header requires 'SignedHeaders' "
                f"parameter. Authorization={authorization or ''}"
            )
            code = "IncompleteSignatureException"
            return self.send(
                400,
                json.dumps({"__type": code, "message": message}),
                [
                    ("Content-Type", "application/x-amz-json-1.1"),
                    ("x-amzn-ErrorType", code),
                    ("x-amzn-RequestId", "00000000-0000-0000-0000-000000000000"),
                ],
            )
        with self.server.lock:
            self.server.requests[region] = self.server.requests.get(region, 0) + 1
        backend = self.server.routes.get(region)
        answer = forward(backend, self, body) if backend else None
        if answer is None:
            # What a dead endpoint does: no answer at all.
            self.close_connection = True
            return
        status, reason, headers, answer_body = answer
        self.send_response_only(status, reason)
        relayed = [(key, value) for key, value in headers if key.lower() not in HOP_BY_HOP]
        has_length = any(key.lower() == "content-length" for key, _ in relayed)
        # A chunked or close-delimited body is re-framed; HEAD, 204 and 304 have none.
        if not has_length and self.command != "HEAD" and status not in (204, 304):
            relayed.append(("Content-Length", str(len(answer_body))))
        for key, value in relayed:
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(answer_body)


def forward(backend, request, body):
    """Sends `request` as it came to `backend` (host, port), on a connection of its own; returns
    the answer's status, reason, headers and de-chunked body, or None when `backend` does not
    answer (refused, or gone before its answer was complete)."""
    connection = http.client.HTTPConnection(*backend)
    try:
        connection.putrequest(
            request.command, request.path, skip_host=True, skip_accept_encoding=True
        )
        for key, value in request.headers.items():
            connection.putheader(key, value)
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, response.reason, response.getheaders(), response.read()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


def route(text):
    region, sep, url = text.partition("=")
    parts = urllib.parse.urlsplit(url)
    if not sep or parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/"):
        raise argparse.ArgumentTypeError(f"not REGION=http://HOST:PORT: {text}")
    return region, (parts.hostname, parts.port or 80)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--route", type=route, action="append", default=[],
                        metavar="REGION=URL", help="where the requests signed for REGION go")
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.routes = dict(args.route)
    server.requests = {region: 0 for region in server.routes}
    server.lock = threading.Lock()
    print(f"listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
