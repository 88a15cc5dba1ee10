"""Fidelity of the Auto Scaling lifecycle-action fake: the Query protocol's shapes and the
documented errors, as the real service answers them."""

import json
import pathlib
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET

import pytest

FAKE = pathlib.Path(__file__).with_name("autoscaling_fake.py")
NS = "{http://autoscaling.amazonaws.com/doc/2011-01-01/}"


@pytest.fixture
def asg():
    proc = subprocess.Popen([sys.executable, str(FAKE)], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("listening on "), line
    yield line.split()[-1]
    proc.kill()
    proc.wait()


def post(url, data, content_type="application/x-www-form-urlencoded"):
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def call(base, action, **params):
    form = urllib.parse.urlencode({"Action": action, "Version": "2011-01-01", **params})
    return post(base + "/", form.encode())


def activate(base, group="g", hook="launch", instance="i-1"):
    body = json.dumps({"group": group, "hook": hook, "instance": instance}).encode()
    assert post(base + "/fake/actions", body, "application/json")[0] == 200


def error_code(body):
    root = ET.fromstring(body)
    assert root.tag == NS + "ErrorResponse"
    return root.find(f"{NS}Error/{NS}Code").text, root.find(f"{NS}Error/{NS}Message").text


HOOK = {"AutoScalingGroupName": "g", "LifecycleHookName": "launch", "InstanceId": "i-1"}


def test_complete_answers_the_query_protocol_shape(asg):
    activate(asg)
    status, body = call(asg, "CompleteLifecycleAction", LifecycleActionResult="CONTINUE", **HOOK)
    assert status == 200
    root = ET.fromstring(body)
    assert root.tag == NS + "CompleteLifecycleActionResponse"
    assert root.find(f"{NS}CompleteLifecycleActionResult") is not None
    assert root.find(f"{NS}ResponseMetadata/{NS}RequestId").text


def test_no_active_action_is_a_validation_error(asg):
    status, body = call(asg, "CompleteLifecycleAction", LifecycleActionResult="CONTINUE", **HOOK)
    assert status == 400
    assert error_code(body) == ("ValidationError", "No active Lifecycle Action found with instance ID i-1")


def test_completing_ends_the_action(asg):
    activate(asg)
    assert call(asg, "CompleteLifecycleAction", LifecycleActionResult="ABANDON", **HOOK)[0] == 200
    status, body = call(asg, "CompleteLifecycleAction", LifecycleActionResult="ABANDON", **HOOK)
    assert status == 400 and error_code(body)[0] == "ValidationError"


def test_heartbeat_keeps_the_action(asg):
    activate(asg)
    for _ in range(2):
        status, body = call(asg, "RecordLifecycleActionHeartbeat", **HOOK)
        assert status == 200
        assert ET.fromstring(body).tag == NS + "RecordLifecycleActionHeartbeatResponse"
    assert call(asg, "CompleteLifecycleAction", LifecycleActionResult="CONTINUE", **HOOK)[0] == 200


def test_bad_result_is_a_validation_error(asg):
    activate(asg)
    status, body = call(asg, "CompleteLifecycleAction", LifecycleActionResult="MAYBE", **HOOK)
    assert status == 400 and error_code(body)[0] == "ValidationError"


def test_throttling_on_demand(asg):
    activate(asg)
    post(asg + "/fake/throttle", json.dumps({"count": 1}).encode(), "application/json")
    status, body = call(asg, "RecordLifecycleActionHeartbeat", **HOOK)
    assert status == 400 and error_code(body) == ("Throttling", "Rate exceeded")
    assert call(asg, "RecordLifecycleActionHeartbeat", **HOOK)[0] == 200


def test_calls_are_recorded_in_order(asg):
    call(asg, "RecordLifecycleActionHeartbeat", **HOOK)
    call(asg, "CompleteLifecycleAction", LifecycleActionResult="CONTINUE", **HOOK)
    with urllib.request.urlopen(asg + "/fake/calls") as resp:
        calls = json.loads(resp.read())
    assert [c["Action"] for c in calls] == ["RecordLifecycleActionHeartbeat", "CompleteLifecycleAction"]
    assert calls[1]["LifecycleActionResult"] == "CONTINUE"
