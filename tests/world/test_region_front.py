"""Fidelity of the region front: two real motos behind it stand for two regions of Secrets
Manager, reached by an AWS SDK (botocore) pointed at one endpoint and signing for one region or
the other; a stopped moto is a region that is down."""

import http.client
import json
import pathlib
import urllib.parse
from types import SimpleNamespace

import botocore.config
import botocore.exceptions
import botocore.session
import pytest

FRONT = pathlib.Path(__file__).with_name("region_front.py")
MOTO = pathlib.Path(__file__).with_name("moto_server.py")
# What botocore raises for a connection closed without an answer: the front has accepted it, so
# a dead region is never a refused connection (EndpointConnectionError).
CONNECTION_CLOSED = botocore.exceptions.ConnectionClosedError
# moto does not check signatures unless told to: any signature goes.
FAKE_SIGNATURE = (
    "AWS4-HMAC-SHA256 Credential=testing/20261205/{region}/secretsmanager/aws4_request, "
    "SignedHeaders=host, Signature=0"
)


@pytest.fixture
def regions(start):
    """A moto for us-east-1 and another for us-west-2, behind one front."""
    east, east_url = start(MOTO)
    west, west_url = start(MOTO)
    _, front = start(FRONT, "--route", f"us-east-1={east_url}", "--route", f"us-west-2={west_url}")
    return SimpleNamespace(east=east, east_url=east_url, west_url=west_url, front=front)


def secretsmanager(endpoint, region):
    """Secrets Manager at `endpoint`, signing for `region`, one attempt per call (no retry
    hides a failure)."""
    return botocore.session.get_session().create_client(
        "secretsmanager",
        region_name=region,
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=botocore.config.Config(
            retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=10
        ),
    )


def requests(front):
    connection = http.client.HTTPConnection(urllib.parse.urlsplit(front).netloc, timeout=5)
    connection.request("GET", "/fake/requests")
    response = connection.getresponse()
    assert response.status == 200
    return json.loads(response.read())


def test_each_region_is_its_own_moto(regions):
    east = secretsmanager(regions.front, "us-east-1")
    west = secretsmanager(regions.front, "us-west-2")
    east.create_secret(Name="db", SecretString="east value")
    west.create_secret(Name="db", SecretString="west value")

    assert east.get_secret_value(SecretId="db")["SecretString"] == "east value"
    assert west.get_secret_value(SecretId="db")["SecretString"] == "west value"
    # moto keeps each region's secrets apart even in one server: the secret created for
    # us-west-2 must be in the second server only.
    for moto_url, other_region in [(regions.east_url, "us-west-2"), (regions.west_url, "us-east-1")]:
        with pytest.raises(botocore.exceptions.ClientError) as refused:
            secretsmanager(moto_url, other_region).get_secret_value(SecretId="db")
        assert refused.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert requests(regions.front) == {"us-east-1": 2, "us-west-2": 2}


def test_a_stopped_moto_is_a_region_that_does_not_answer(regions):
    secretsmanager(regions.front, "us-west-2").create_secret(Name="db", SecretString="replica")
    regions.east.kill()
    regions.east.wait()

    with pytest.raises(CONNECTION_CLOSED):
        secretsmanager(regions.front, "us-east-1").get_secret_value(SecretId="db")
    answer = secretsmanager(regions.front, "us-west-2").get_secret_value(SecretId="db")
    assert answer["SecretString"] == "replica"
    assert requests(regions.front) == {"us-east-1": 1, "us-west-2": 2}


def test_a_region_without_route_does_not_answer(start):
    _, front = start(FRONT)
    with pytest.raises(CONNECTION_CLOSED):
        secretsmanager(front, "eu-west-1").get_secret_value(SecretId="db")
    assert requests(front) == {"eu-west-1": 1}


@pytest.mark.parametrize("authorization", [
    None,
    "AWS4-HMAC-SHA256 SignedHeaders=host, Signature=0",
    "AWS4-HMAC-SHA256 Credential=testing/us-east-1/secretsmanager, Signature=0",
    "AWS testing:signature",
])
def test_a_request_without_credential_scope_is_an_incomplete_signature(start, authorization):
    _, front = start(FRONT)
    connection = http.client.HTTPConnection(urllib.parse.urlsplit(front).netloc, timeout=5)
    headers = {
        "X-Amz-Target": "secretsmanager.GetSecretValue",
        "Content-Type": "application/x-amz-json-1.1",
    }
    if authorization:
        headers["Authorization"] = authorization
    connection.request("POST", "/", body=json.dumps({"SecretId": "db"}), headers=headers)
    response = connection.getresponse()
    body = json.loads(response.read())

    assert response.status == 400
    assert response.headers["x-amzn-ErrorType"] == "IncompleteSignatureException"
    assert body["__type"] == "IncompleteSignatureException" and body["message"]
    assert requests(front) == {}


def test_answers_are_relayed_as_is_on_a_kept_alive_connection(regions):
    """The SDKs reuse connections: each answer the front relays, an error included (after which
    moto closes its own connection), leaves the client's connection open for the next."""
    netloc = urllib.parse.urlsplit(regions.front).netloc
    connection = http.client.HTTPConnection(netloc, timeout=5)
    direct = http.client.HTTPConnection(urllib.parse.urlsplit(regions.west_url).netloc, timeout=5)
    headers = {
        "X-Amz-Target": "secretsmanager.GetSecretValue",
        "Content-Type": "application/x-amz-json-1.1",
        "Authorization": FAKE_SIGNATURE.format(region="us-west-2"),
    }
    body = json.dumps({"SecretId": "missing"})
    sockets = []
    for _ in range(2):
        connection.request("POST", "/", body=body, headers=headers)
        relayed = connection.getresponse()
        relayed_body = relayed.read()
        # http.client lets go of a connection the server closes as soon as it has the answer.
        sockets.append(connection.sock)
        direct.request("POST", "/", body=body, headers=headers)
        expected = direct.getresponse()
        expected_body = expected.read()

        assert (relayed.status, relayed_body) == (expected.status, expected_body)
        assert relayed.headers["X-Amzn-ErrorType"] == "ResourceNotFoundException"
        assert "Connection" in expected.headers
        relayed_names = {name.lower() for name in relayed.headers}
        assert relayed_names == {name.lower() for name in expected.headers} - {"connection"}
    assert sockets[0] is not None and sockets[0] is sockets[1]
