"""Fidelity of the IMDS fake: each test pins one documented behaviour of real IMDSv2."""

import json
import pathlib
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

FAKE = pathlib.Path(__file__).with_name("imds_fake.py")


@pytest.fixture
def imds(tmp_path):
    """Starts the fake with a given state; returns its base URL."""
    procs = []

    def start(**state):
        state_file = tmp_path / f"state{len(procs)}.json"
        state_file.write_text(json.dumps(state))
        proc = subprocess.Popen(
            [sys.executable, str(FAKE), "--state", str(state_file)],
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        line = proc.stdout.readline()
        assert line.startswith("listening on "), line
        return line.split()[-1]

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def request(method, url, headers=None, data=None):
    req = urllib.request.Request(url, method=method, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read().decode(), dict(resp.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), dict(e.headers)


def token(base, ttl="21600"):
    status, body, _ = request(
        "PUT", f"{base}/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": ttl}
    )
    assert status == 200
    return body


def get(base, path, tok):
    headers = {} if tok is None else {"X-aws-ec2-metadata-token": tok}
    return request("GET", f"{base}/latest/{path}", headers)[:2]


def test_token_ttl_is_echoed(imds):
    base = imds()
    status, body, headers = request(
        "PUT", f"{base}/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "300"}
    )
    assert status == 200 and body
    assert headers["X-aws-ec2-metadata-token-ttl-seconds"] == "300"


@pytest.mark.parametrize("ttl", [None, "0", "21601", "abc", "-1"])
def test_token_ttl_out_of_bounds_is_400(imds, ttl):
    base = imds()
    headers = {} if ttl is None else {"X-aws-ec2-metadata-token-ttl-seconds": ttl}
    assert request("PUT", f"{base}/latest/api/token", headers)[0] == 400


def test_token_put_with_forwarded_for_is_refused(imds):
    base = imds()
    headers = {"X-aws-ec2-metadata-token-ttl-seconds": "60", "X-Forwarded-For": "10.0.0.1"}
    assert request("PUT", f"{base}/latest/api/token", headers)[0] == 403


def test_get_without_or_with_unknown_token_is_401(imds):
    base = imds()
    assert get(base, "meta-data/instance-id", None)[0] == 401
    assert get(base, "meta-data/instance-id", "not-a-token")[0] == 401


def test_expired_token_is_401(imds):
    base = imds()
    tok = token(base, ttl="1")
    assert get(base, "meta-data/instance-id", tok) == (200, "i-0123456789abcdef0")
    time.sleep(1.2)
    assert get(base, "meta-data/instance-id", tok)[0] == 401


def test_expire_tokens_control_makes_tokens_stale(imds):
    base = imds()
    tok = token(base)
    assert request("POST", f"{base}/fake/expire-tokens", data=b"")[0] == 200
    assert get(base, "meta-data/instance-id", tok)[0] == 401


def test_tags_disabled_by_default_answer_404(imds):
    base = imds()
    tok = token(base)
    assert get(base, "meta-data/tags/instance", tok)[0] == 404
    assert get(base, "meta-data/tags/instance/Service", tok)[0] == 404


def test_tags_enabled_list_keys_and_values(imds):
    base = imds(tags={"Service": "calendar", "Environment": "staging"})
    tok = token(base)
    assert get(base, "meta-data/tags/instance", tok) == (200, "Environment\nService")
    assert get(base, "meta-data/tags/instance/Service", tok) == (200, "calendar")
    assert get(base, "meta-data/tags/instance/Missing", tok)[0] == 404


def test_tags_enabled_but_none_yet_answer_200_empty(imds):
    base = imds(tags={"Service": "calendar"}, tags_delay=30)
    tok = token(base)
    assert get(base, "meta-data/tags/instance", tok) == (200, "")


def test_identity_document_and_placement(imds):
    base = imds(region="eu-west-1", instance_id="i-0abc")
    tok = token(base)
    status, body = get(base, "dynamic/instance-identity/document", tok)
    doc = json.loads(body)
    assert status == 200
    assert (doc["instanceId"], doc["region"], doc["accountId"]) == (
        "i-0abc",
        "eu-west-1",
        "123456789012",
    )
    assert get(base, "meta-data/placement/region", tok) == (200, "eu-west-1")


def test_lifecycle_state_and_spot_action(imds):
    base = imds(lifecycle_state="Warmed:Stopped")
    tok = token(base)
    assert get(base, "meta-data/autoscaling/target-lifecycle-state", tok) == (
        200,
        "Warmed:Stopped",
    )
    assert get(base, "meta-data/spot/instance-action", tok)[0] == 404
    request("POST", f"{base}/fake/state", data=json.dumps(
        {"spot_action": {"action": "terminate", "time": "2026-11-22T17:00:00Z"}}
    ).encode())
    status, body = get(base, "meta-data/spot/instance-action", tok)
    assert status == 200 and json.loads(body)["action"] == "terminate"


def test_disabled_endpoint_answers_403(imds):
    base = imds(disabled=True)
    assert request("PUT", f"{base}/latest/api/token",
                   {"X-aws-ec2-metadata-token-ttl-seconds": "60"})[0] == 403


def test_unknown_path_is_404(imds):
    base = imds()
    assert get(base, "meta-data/no-such-thing", token(base))[0] == 404


def test_expire_tokens_after_makes_tokens_stale_once(imds):
    base = imds(expire_tokens_after=2)
    tok = token(base)
    assert get(base, "meta-data/instance-id", tok)[0] == 200
    assert get(base, "meta-data/instance-id", tok)[0] == 200
    assert get(base, "meta-data/instance-id", tok)[0] == 401
    fresh = token(base)
    for _ in range(3):
        assert get(base, "meta-data/instance-id", fresh)[0] == 200


@pytest.mark.parametrize("status", [429, 503])
def test_failures_come_with_the_configured_status_then_stop(imds, status):
    base = imds(fail_next=2, fail_status=status)
    assert request("PUT", f"{base}/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "60"})[0] == status
    assert request("PUT", f"{base}/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "60"})[0] == status
    assert get(base, "meta-data/instance-id", token(base)) == (200, "i-0123456789abcdef0")
