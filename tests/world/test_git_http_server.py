"""Fidelity of the smart HTTP git server: its throttle answers as a rate-limited git host does,
and its record of requests tells which carried credentials without holding them."""

import base64
import http.client
import json
import pathlib
import subprocess
import urllib.parse

import pytest

SERVER = pathlib.Path(__file__).with_name("git_http_server.py")
ADVERTISEMENT = "/app.git/info/refs?service=git-upload-pack"
PASSWORD = "s3cret-canary"
RIGHT = "Basic " + base64.b64encode(f"deploy:{PASSWORD}".encode()).decode()
WRONG = "Basic " + base64.b64encode(b"deploy:wrong").decode()


@pytest.fixture
def serve(start, tmp_path):
    """Starts the server over a root holding an empty app.git, with extra arguments; returns
    its base URL."""
    subprocess.run(["git", "init", "-q", "--bare", str(tmp_path / "app.git")], check=True)
    return lambda *args: start(SERVER, "--root", str(tmp_path), "--user", "deploy",
                               "--password", PASSWORD, *args)[1]


def get(url, path, authorizations=()):
    """GET `path` with each of `authorizations` as an Authorization header; returns the
    response and its body."""
    conn = http.client.HTTPConnection(urllib.parse.urlsplit(url).netloc, timeout=10)
    conn.putrequest("GET", path)
    for value in authorizations:
        conn.putheader("Authorization", value)
    conn.endheaders()
    response = conn.getresponse()
    return response, response.read()


def requests(url):
    return json.loads(get(url, "/fake/requests")[1])


def test_the_first_requests_are_throttled_with_retry_after_then_served(serve):
    url = serve("--throttle", "2:7")
    for _ in range(2):
        response, _ = get(url, ADVERTISEMENT, [RIGHT])
        assert (response.status, response.getheader("Retry-After")) == (429, "7")
    response, body = get(url, ADVERTISEMENT, [RIGHT])
    assert response.status == 200
    assert response.getheader("Content-Type") == "application/x-git-upload-pack-advertisement"
    assert b"# service=git-upload-pack" in body
    seen = requests(url)
    assert [r["status"] for r in seen] == [429, 429, 200]
    assert seen[0]["at"] <= seen[1]["at"] <= seen[2]["at"]


def test_a_throttle_without_seconds_sends_no_retry_after(serve):
    url = serve("--throttle", "1")
    response, _ = get(url, ADVERTISEMENT, [RIGHT])
    assert (response.status, response.getheader("Retry-After")) == (429, None)
    assert get(url, ADVERTISEMENT, [RIGHT])[0].status == 200


def test_the_record_tells_anonymous_and_doubled_credentials_without_holding_them(serve):
    url = serve()
    statuses = [get(url, ADVERTISEMENT, headers)[0].status
                for headers in ([], [RIGHT], [WRONG], [RIGHT, RIGHT])]
    # Two Authorization headers make no valid request, whatever they hold.
    assert statuses == [401, 200, 401, 401]
    seen = requests(url)
    assert [(r["method"], r["authorization"], r["authorized"]) for r in seen] == [
        ("GET", 0, False), ("GET", 1, True), ("GET", 1, False), ("GET", 2, False)]
    assert {r["path"] for r in seen} == {ADVERTISEMENT}
    assert PASSWORD not in json.dumps(seen) and RIGHT not in json.dumps(seen)
