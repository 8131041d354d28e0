"""Tests for FaultyUpstream, the fault-injecting loopback server every fault test relies on."""

from __future__ import annotations

import dataclasses
import json
import random
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from seawall.testing._upstream import Fault, FaultyUpstream, RecordedRequest

# Short everywhere: a fault that "works" must show up fast, and a bug must not
# hang the suite.
TIMEOUT = httpx.Timeout(2.0)


@pytest.fixture
def upstream() -> Iterator[FaultyUpstream]:
    with FaultyUpstream() as server:
        yield server


@pytest.fixture
def client(upstream: FaultyUpstream) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=upstream.url, timeout=TIMEOUT) as c:
        yield c


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# -- healthy responses and scripts -------------------------------------------------


def test_healthy_default(upstream: FaultyUpstream, client: httpx.Client) -> None:
    assert upstream.url == f"http://127.0.0.1:{upstream.port}"
    first = client.get("/x")
    second = client.get("/x?q=1")
    other = client.get("/y")
    assert first.status_code == 200
    assert first.headers["content-type"] == "application/json"
    assert first.content == b'{"path": "/x", "n": 1}'
    assert second.json() == {"path": "/x", "n": 2}
    assert other.json() == {"path": "/y", "n": 1}


def test_keep_alive_reuses_one_connection(upstream: FaultyUpstream, client: httpx.Client) -> None:
    for _ in range(5):
        assert client.get("/x").status_code == 200
    assert upstream.open_connections == 1


def test_connection_close_is_honoured(upstream: FaultyUpstream, client: httpx.Client) -> None:
    response = client.get("/x", headers={"Connection": "close"})
    assert response.headers["connection"] == "close"
    assert upstream.wait_for_open_connections(0, timeout=1.0)


def test_head_has_no_body(client: httpx.Client) -> None:
    response = client.head("/x")
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["content-length"] == str(len(b'{"path": "/x", "n": 1}'))
    # The connection is still usable: the HEAD response was framed correctly.
    assert client.get("/x").json()["n"] == 2


def test_route_consumes_script_in_order_and_last_repeats(
    upstream: FaultyUpstream, client: httpx.Client
) -> None:
    upstream.route("/s", Fault.error(503), Fault.error(502), Fault(status=201, body=b"made"))
    statuses = [client.get("/s").status_code for _ in range(5)]
    assert statuses == [503, 502, 201, 201, 201]
    assert client.get("/s").content == b"made"
    # Other paths are untouched; re-routing replays from the start.
    assert client.get("/other").status_code == 200
    upstream.route("/s", Fault.error(500), Fault.ok())
    assert [client.get("/s").status_code for _ in range(3)] == [500, 200, 200]
    upstream.route("/s")
    assert client.get("/s").status_code == 200


def test_set_default_scripts_unrouted_paths(upstream: FaultyUpstream, client: httpx.Client) -> None:
    upstream.route("/fine")
    upstream.set_default(Fault.error(500), Fault.error(404))
    assert client.get("/a").status_code == 500
    assert client.get("/b").status_code == 404
    assert client.get("/a").status_code == 404
    assert client.get("/fine").status_code == 200
    upstream.reset()
    assert client.get("/a").status_code == 200


def test_error_with_retry_after_and_extra_headers(
    upstream: FaultyUpstream, client: httpx.Client
) -> None:
    upstream.route(
        "/e",
        Fault.error(429, retry_after=2),
        Fault.error(503, retry_after=0.5),
        Fault(status=200, headers={"Cache-Control": "no-store", "Vary": "Accept"}, body=b"hi"),
    )
    r1, r2, r3 = (client.get("/e") for _ in range(3))
    assert (r1.status_code, r1.headers["retry-after"], r1.reason_phrase) == (
        429,
        "2",
        "Too Many Requests",
    )
    assert r1.json() == {"path": "/e", "n": 1}
    assert (r2.status_code, r2.headers["retry-after"]) == (503, "0.5")
    assert r3.headers["cache-control"] == "no-store"
    assert r3.headers["vary"] == "Accept"
    assert r3.content == b"hi"
    assert "content-type" not in r3.headers


def test_no_content_status(upstream: FaultyUpstream, client: httpx.Client) -> None:
    upstream.route("/n", Fault(status=204))
    response = client.get("/n")
    assert (response.status_code, response.content) == (204, b"")
    assert "content-length" not in response.headers
    assert client.get("/n").status_code == 204  # still framed right on the same connection


# -- faults --------------------------------------------------------------------


def test_delay_fires_client_read_timeout_and_server_drops_connection(
    upstream: FaultyUpstream,
) -> None:
    upstream.route("/slow", Fault.latency(0.5))
    with httpx.Client(base_url=upstream.url, timeout=httpx.Timeout(2.0, read=0.1)) as c:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            c.get("/slow")
        assert time.monotonic() - started < 0.4
    # The server notices the client left mid-delay instead of sleeping on.
    assert upstream.wait_for_open_connections(0, timeout=0.3)


def test_delay_then_response(upstream: FaultyUpstream, client: httpx.Client) -> None:
    upstream.route("/slow", Fault.latency(0.2))
    started = time.monotonic()
    assert client.get("/slow").status_code == 200
    assert 0.2 <= time.monotonic() - started < 1.0


def test_body_delay_times_out_mid_body(upstream: FaultyUpstream) -> None:
    upstream.route("/b", Fault.slow_body(0.5))
    with (
        httpx.Client(base_url=upstream.url, timeout=httpx.Timeout(2.0, read=0.1)) as c,
        c.stream("GET", "/b") as response,
    ):
        # Headers arrive on time; the rest of the body does not.
        assert response.status_code == 200
        with pytest.raises(httpx.ReadTimeout):
            response.read()


def test_body_delay_full_body_arrives(upstream: FaultyUpstream, client: httpx.Client) -> None:
    upstream.route("/b", Fault(body=b"0123456789", body_delay=0.2))
    started = time.monotonic()
    response = client.get("/b")
    assert response.content == b"0123456789"
    assert time.monotonic() - started >= 0.2


def test_reset(upstream: FaultyUpstream, client: httpx.Client) -> None:
    upstream.route("/r", Fault.reset_connection(), Fault.ok())
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        client.get("/r")
    assert client.get("/r").status_code == 200
    assert upstream.count("/r") == 2


def test_reset_sends_rst() -> None:
    # At the socket level: the client sees ECONNRESET, not a clean EOF.
    with FaultyUpstream() as server:
        server.route("/r", Fault.reset_connection())
        with socket.create_connection(("127.0.0.1", server.port), timeout=2.0) as sock:
            sock.sendall(b"GET /r HTTP/1.1\r\nHost: x\r\n\r\n")
            with pytest.raises(ConnectionResetError):
                sock.recv(1024)


def test_blackhole_times_out_and_is_recorded(upstream: FaultyUpstream) -> None:
    upstream.route("/h", Fault.hang())
    with (
        httpx.Client(base_url=upstream.url, timeout=httpx.Timeout(2.0, read=0.1)) as c,
        pytest.raises(httpx.ReadTimeout),
    ):
        c.post("/h", content=b"payload")
    assert [r.body for r in upstream.requests("/h")] == [b"payload"]
    assert upstream.wait_for_open_connections(0, timeout=1.0)


def test_truncated(upstream: FaultyUpstream, client: httpx.Client) -> None:
    upstream.route("/t", Fault.truncated())
    with pytest.raises(httpx.RemoteProtocolError):
        client.get("/t")


def test_truncated_after_body_delay(upstream: FaultyUpstream, client: httpx.Client) -> None:
    upstream.route("/t", Fault(body=b"abcdef", truncate=True, body_delay=0.1))
    with client.stream("GET", "/t") as response, pytest.raises(httpx.RemoteProtocolError):
        response.read()


def test_invalid(upstream: FaultyUpstream, client: httpx.Client) -> None:
    upstream.route("/g", Fault.garbage(), Fault.ok())
    with pytest.raises(httpx.RemoteProtocolError):
        client.get("/g")
    assert client.get("/g").status_code == 200


def test_refused_port() -> None:
    port = FaultyUpstream.refused_port()
    with (
        httpx.Client(timeout=TIMEOUT) as c,
        pytest.raises(httpx.ConnectError),
    ):
        c.get(f"http://127.0.0.1:{port}/")


def test_unaccepted_listener_times_out_at_connect() -> None:
    with (
        FaultyUpstream.unaccepted_listener() as port,
        httpx.Client(timeout=httpx.Timeout(2.0, connect=0.2)) as c,
        pytest.raises(httpx.ConnectTimeout),
    ):
        c.get(f"http://127.0.0.1:{port}/")


def test_ratio_with_seed_is_deterministic(upstream: FaultyUpstream, client: httpx.Client) -> None:
    fault = Fault(status=503, ratio=0.5, seed=42)
    rng = random.Random(42)
    expected = [503 if rng.random() < 0.5 else 200 for _ in range(20)]
    assert 0 < expected.count(503) < 20  # the seed exercises both branches

    upstream.route("/p", fault)
    first = [client.get("/p").status_code for _ in range(20)]
    upstream.route("/p", fault)  # routing again re-seeds
    second = [client.get("/p").status_code for _ in range(20)]
    assert first == second == expected


def test_ratio_extremes(upstream: FaultyUpstream, client: httpx.Client) -> None:
    upstream.route("/never", Fault(status=500, ratio=0.0))
    upstream.route("/always", dataclasses.replace(Fault.error(500), ratio=1.0))
    assert {client.get("/never").status_code for _ in range(5)} == {200}
    assert {client.get("/always").status_code for _ in range(5)} == {500}


# -- request log -------------------------------------------------------------------


def test_request_log(upstream: FaultyUpstream, client: httpx.Client) -> None:
    before = time.monotonic()
    client.post("/pay?x=1", content=b'{"amount": 5}', headers={"Idempotency-Key": "k-1"})
    client.post("/pay", content=b"again", headers={"Idempotency-Key": "k-1"})
    client.post("/pay", content=b"other", headers={"Idempotency-Key": "k-2"})
    client.get("/status")

    first = upstream.requests("/pay")[0]
    assert isinstance(first, RecordedRequest)
    assert (first.method, first.path, first.target) == ("POST", "/pay", "/pay?x=1")
    assert first.body == b'{"amount": 5}'
    assert first.idempotency_key == "k-1"
    assert first.header("IDEMPOTENCY-KEY") == "k-1"
    assert first.header("x-missing") is None
    assert ("idempotency-key", "k-1") in first.headers
    assert before <= first.at <= time.monotonic()

    assert upstream.count() == 4
    assert upstream.count("/pay") == 3
    assert upstream.count("/pay", idempotency_key="k-1") == 2
    assert [r.body for r in upstream.requests(idempotency_key="k-2")] == [b"other"]
    assert upstream.requests("/status")[0].idempotency_key is None

    upstream.clear()
    assert upstream.count() == 0
    assert client.get("/pay").json() == {"path": "/pay", "n": 1}


def test_chunked_request_body(upstream: FaultyUpstream, client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"hello "
        yield b"world"

    assert client.post("/c", content=chunks()).status_code == 200
    (recorded,) = upstream.requests("/c")
    assert recorded.header("transfer-encoding") == "chunked"
    assert recorded.body == b"hello world"


def test_faulted_requests_are_recorded(upstream: FaultyUpstream, client: httpx.Client) -> None:
    upstream.route("/r", Fault.reset_connection())
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        client.put("/r", content=b"x", headers={"Idempotency-Key": "abc"})
    (recorded,) = upstream.requests("/r", idempotency_key="abc")
    assert (recorded.method, recorded.body) == ("PUT", b"x")


def test_malformed_request_gets_400() -> None:
    with (
        FaultyUpstream() as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=2.0) as sock,
    ):
        sock.sendall(b"BROKEN\r\n\r\n")
        assert sock.recv(1024).startswith(b"HTTP/1.1 400 ")
        assert server.count() == 0


# -- connections and lifecycle -------------------------------------------------


def test_open_connections_return_to_zero(upstream: FaultyUpstream) -> None:
    assert upstream.open_connections == 0
    with (
        httpx.Client(base_url=upstream.url, timeout=TIMEOUT) as c1,
        httpx.Client(base_url=upstream.url, timeout=TIMEOUT) as c2,
    ):
        c1.get("/x")
        c2.get("/x")
        assert upstream.wait_for_open_connections(2, timeout=1.0)
    assert upstream.wait_for_open_connections(0, timeout=1.0)
    assert upstream.open_connections == 0


def test_stop_closes_blackholed_connections_and_joins_thread() -> None:
    server = FaultyUpstream().start()
    server.route("/h", Fault.hang())
    threads_before = {t.name for t in threading.enumerate()}
    assert f"FaultyUpstream:{server.port}" in threads_before
    errors: list[BaseException] = []

    def call() -> None:
        with httpx.Client(timeout=httpx.Timeout(5.0)) as c:
            try:
                c.get(f"{server.url}/h")
            except httpx.HTTPError as exc:
                errors.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    assert server.wait_for_open_connections(1, timeout=1.0)
    deadline = time.monotonic() + 1.0
    while server.count("/h") == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    server.stop()
    server.stop()  # idempotent
    caller.join(2.0)
    assert not caller.is_alive()
    assert time.monotonic() - started < 1.0
    assert len(errors) == 1
    assert isinstance(errors[0], httpx.RemoteProtocolError | httpx.ReadError)
    assert server.open_connections == 0
    assert f"FaultyUpstream:{server.port}" not in {t.name for t in threading.enumerate()}
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1.0).close()


def test_restart_and_busy_port() -> None:
    with FaultyUpstream() as first:
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{first.port}"):
            FaultyUpstream(port=first.port).start()
        with pytest.raises(RuntimeError, match="already running"):
            first.start()
    first.start()
    try:
        with httpx.Client(timeout=TIMEOUT) as c:
            assert c.get(f"{first.url}/x").status_code == 200
    finally:
        first.stop()


def test_url_before_start() -> None:
    server = FaultyUpstream()
    with pytest.raises(RuntimeError, match="not been started"):
        _ = server.url
    server.stop()  # stopping a never-started server is a no-op


@pytest.mark.anyio
async def test_async_client_and_async_context(anyio_backend: str) -> None:
    async with FaultyUpstream() as server:
        server.route("/a", Fault.latency(0.1), Fault.error(503))
        async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
            first = await client.get("/a")
            second = await client.get("/a")
        assert (first.status_code, second.status_code) == (200, 503)
        assert json.loads(first.content) == {"path": "/a", "n": 1}
    assert server.open_connections == 0


# -- Fault values ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"status": 99}, "Fault.status: must be in 200..599, got 99"),
        ({"status": 600}, "Fault.status: must be in 200..599, got 600"),
        ({"status": 101}, "Fault.status"),
        ({"delay": -1}, "Fault.delay: must be >= 0, got -1"),
        ({"delay": float("inf")}, "Fault.delay: must be finite, got inf"),
        ({"body_delay": -0.5}, "Fault.body_delay: must be >= 0, got -0.5"),
        ({"ratio": 1.5}, r"Fault.ratio: must be in \[0, 1\], got 1.5"),
        ({"ratio": float("nan")}, "Fault.ratio"),
        ({"reset": True, "blackhole": True}, "Fault.blackhole: cannot be combined with reset"),
        ({"invalid": True, "body_delay": 1.0}, "Fault.body_delay"),
        ({"status": 204, "body": b"x"}, "Fault.body"),
        ({"truncate": True, "body": b""}, "Fault.truncate"),
        ({"headers": {"Content-Length": "3"}}, "Fault.headers"),
        ({"headers": {"Bad Name": "x"}}, "Fault.headers"),
        ({"headers": {"X-Split": "a\r\nb"}}, "Fault.headers"),
    ],
)
def test_fault_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Fault(**kwargs)  # type: ignore[arg-type]


def test_fault_shortcuts_and_value_semantics() -> None:
    assert Fault.ok() == Fault()
    assert Fault.latency(0.3).delay == 0.3
    assert Fault.error().status == 500
    assert dict(Fault.error(503, retry_after="Wed, 21 Oct 2015 07:28:00 GMT").headers) == {
        "Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"
    }
    assert Fault.reset_connection().reset
    assert Fault.hang().blackhole
    assert Fault.slow_body(0.2).body_delay == 0.2
    assert Fault.truncated().truncate
    assert Fault.garbage().invalid
    with pytest.raises(ValueError, match=r"Fault\.error: status"):
        Fault.error(200)

    headers = {"Retry-After": "1"}
    fault = Fault(status=503, headers=headers)
    headers["Retry-After"] = "99"  # the fault kept its own copy
    assert fault.headers["Retry-After"] == "1"
    assert fault == Fault(status=503, headers={"Retry-After": "1"})
    assert hash(fault) == hash(Fault(status=503, headers={"Retry-After": "1"}))
    assert repr(fault) == "Fault(status=503, headers={'Retry-After': '1'})"
    assert repr(Fault()) == "Fault()"


def test_route_rejects_bad_arguments(upstream: FaultyUpstream) -> None:
    with pytest.raises(ValueError, match="must start with '/'"):
        upstream.route("x")
    with pytest.raises(TypeError, match="expected Fault"):
        upstream.route("/x", [Fault()])  # type: ignore[arg-type]
