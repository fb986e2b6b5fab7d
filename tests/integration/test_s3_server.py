"""The local S3 server (deploy/local/s3_server.py): connections are kept alive, and an empty PUT that expects a
`100 Continue` (as botocore sends it) gets its answer."""

import socket
from collections.abc import Iterator

import pytest

from tests.conftest import local_s3_server


@pytest.fixture(scope="module")
def endpoint() -> Iterator[tuple[str, int]]:
    # A server of its own, even when TEST_S3_ENDPOINT names another: this tests the local server itself.
    with local_s3_server() as url:
        host, port = url.removeprefix("http://").split(":")
        yield host, int(port)


def exchange(connection: socket.socket, request: bytes, answers: int = 1) -> bytes:
    """Send `request` and read until `answers` complete responses (status line to the end of a body of
    Content-Length bytes) have arrived."""
    connection.sendall(request)
    received = b""
    while True:
        head, separator, rest = received.rpartition(b"\r\n\r\n")
        if separator and received.count(b"HTTP/1.1 ") >= answers:
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                ),
                0,
            )
            if len(rest) >= length and not head.split(b"\r\n")[-1].startswith(b"HTTP/1.1 100"):
                return received
        chunk = connection.recv(65536)
        if not chunk:
            return received
        received += chunk


def test_two_requests_share_one_connection(endpoint: tuple[str, int]) -> None:
    with socket.create_connection(endpoint, timeout=10) as connection:
        first = exchange(connection, b"PUT /keepalive-bucket HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        assert first.startswith(b"HTTP/1.1 200"), first
        assert b"connection: close" not in first.lower()
        second = exchange(connection, b"GET /keepalive-bucket HTTP/1.1\r\nHost: x\r\n\r\n")
        assert second.startswith(b"HTTP/1.1 200"), second


def test_an_empty_put_expecting_continue_is_answered(endpoint: tuple[str, int]) -> None:
    with socket.create_connection(endpoint, timeout=10) as connection:
        exchange(connection, b"PUT /continue-bucket HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        request = b"PUT /continue-bucket/empty HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n"
        answer = exchange(connection, request, answers=2)
    assert answer.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200"), answer
