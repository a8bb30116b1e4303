"""The worker's HTTP server itself (uvicorn with our protocol and middleware, in this
process): slow request heads are cut at the header deadline, slow bodies and kept-alive
connections are not; ids holding a ``/`` (sent as ``%2F``) reach their routes whole."""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
import uvicorn
from fastapi import APIRouter, FastAPI, Request

from stream.api.server import EncodedSlashes, WebService
from stream.dev.stack import free_port

TIMEOUT_S = 1.5


def _app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(EncodedSlashes)
    router = APIRouter(prefix="/v1/{tenant}")

    @router.get("/items/{item_id:segment}/similar")
    async def similar(tenant: str, item_id: str) -> dict[str, str]:
        return {"tenant": tenant, "similar": item_id}

    @router.get("/items/{item_id:segment}")
    async def item(tenant: str, item_id: str) -> dict[str, str]:
        return {"tenant": tenant, "item": item_id}

    @router.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    app.include_router(router)
    return app


@pytest.fixture(scope="module")
def base() -> Iterator[tuple[str, int]]:
    from stream.config import Settings

    port = free_port()
    # The server options the worker's WebService gives uvicorn, with a short deadline.
    options = WebService.uvicorn_options_for(Settings(web_header_timeout_s=TIMEOUT_S))
    config = uvicorn.Config(_app(), host="127.0.0.1", port=port, log_level="warning", **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield "127.0.0.1", port
    server.should_exit = True
    thread.join(5)


def _get(address: tuple[str, int], path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://{address[0]}:{address[1]}{path}", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _response(sock: socket.socket) -> bytes:
    """One whole response (head and content-length body) from a kept-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += sock.recv(4096)
    return head + b"\r\n\r\n" + body


def _closed_after(sock: socket.socket, started: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and when it closed."""
    sock.settimeout(TIMEOUT_S * 4)
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data, time.monotonic() - started


def test_half_a_request_line_sent_slowly_is_cut_at_the_deadline(base: tuple[str, int]) -> None:
    with socket.create_connection(base) as sock:
        started = time.monotonic()
        for byte in b"GET /v1/t/it":  # half a request line, a byte every 0.1 s
            sock.send(bytes([byte]))
            time.sleep(0.1)
        data, took = _closed_after(sock, started)
    assert data.startswith(b"HTTP/1.1 408"), data
    assert TIMEOUT_S - 0.1 < took < TIMEOUT_S + 1.0, took


def test_a_silent_connection_is_closed_too(base: tuple[str, int]) -> None:
    with socket.create_connection(base) as sock:
        data, took = _closed_after(sock, time.monotonic())
    assert data.startswith(b"HTTP/1.1 408") and took < TIMEOUT_S + 1.0, (data, took)


def test_a_kept_alive_connection_gets_a_new_deadline_per_request(base: tuple[str, int]) -> None:
    with socket.create_connection(base) as sock:
        sock.settimeout(5)
        time.sleep(TIMEOUT_S * 0.7)
        sock.send(b"GET /v1/t/items/a HTTP/1.1\r\nhost: x\r\n\r\n")
        first = _response(sock)
        assert first.startswith(b"HTTP/1.1 200"), first
        time.sleep(TIMEOUT_S * 0.7)  # past the first deadline; idle within keep-alive
        sock.send(b"GET /v1/t/items/b HTTP/1.1\r\nhost: x\r\n\r\n")
        second = _response(sock)
        assert second.startswith(b"HTTP/1.1 200") and b'"item":"b"' in second, second
        started = time.monotonic()
        sock.send(b"GET /v1/t/it")  # a third head that never ends
        data, took = _closed_after(sock, started)
    assert data.startswith(b"HTTP/1.1 408") and took < TIMEOUT_S + 1.0, (data, took)


def test_a_slow_body_is_not_cut_by_the_header_deadline(base: tuple[str, int]) -> None:
    body = b"x" * 20
    with socket.create_connection(base) as sock:
        sock.settimeout(10)
        sock.send(b"POST /v1/t/echo HTTP/1.1\r\nhost: x\r\ncontent-length: 20\r\n\r\n")
        for i in range(0, len(body), 5):
            time.sleep(TIMEOUT_S / 2)
            sock.send(body[i : i + 5])
        answer = _response(sock)
    assert answer.startswith(b"HTTP/1.1 200") and b'"bytes":20' in answer, answer


@pytest.mark.parametrize(
    ("path", "answer"),
    [
        ("/v1/t/items/a%2Fb", b'{"tenant":"t","item":"a/b"}'),
        ("/v1/t/items/a%2fb/similar", b'{"tenant":"t","similar":"a/b"}'),
        ("/v1/t/items/x%2Fsimilar", b'{"tenant":"t","item":"x/similar"}'),
        ("/v1/t/items/100%25", b'{"tenant":"t","item":"100%"}'),
        ("/v1/t/items/%252F", b'{"tenant":"t","item":"%2F"}'),
        ("/v1/t/items/a%20b", b'{"tenant":"t","item":"a b"}'),
        ("/v1/t%2Fu/items/a", b'{"tenant":"t%2Fu","item":"a"}'),  # refused by the name check
    ],
)
def test_ids_holding_a_slash_reach_their_route_whole(
    base: tuple[str, int], path: str, answer: bytes
) -> None:
    assert _get(base, path) == (200, answer)
    assert _get(base, "/v1/t/items/a/b")[0] == 404  # a plain slash is still a separator


# -- the spec -------------------------------------------------------------------------------
def _spec() -> dict:
    from stream.api.context import WebContext
    from stream.api.server import create_api
    from stream.config import Settings

    settings = Settings(admin_token="t" * 32)
    ctx = WebContext(settings, counters=dict, models=None, serving=None)  # type: ignore[arg-type]
    return create_api(ctx).openapi()


def _operations(spec: dict) -> list[tuple[str, str, dict]]:
    return [(m.upper(), p, op) for p, ops in spec["paths"].items() for m, op in ops.items()]


def test_the_spec_is_valid_openapi() -> None:
    from openapi_spec_validator import validate

    spec = _spec()
    validate(spec)
    assert len(_operations(spec)) >= 25


def test_every_json_answer_is_typed_and_none_is_a_422() -> None:
    spec = _spec()
    untyped, with_422 = [], []
    for method, path, op in _operations(spec):
        for status, answer in op["responses"].items():
            if status == "422":
                with_422.append(f"{method} {path}")
            schema = answer.get("content", {}).get("application/json", {}).get("schema")
            # A named model, not a bare "object" or "string": every JSON answer is one.
            if schema is not None and "$ref" not in schema:
                untyped.append(f"{method} {path} {status}: {schema}")
            if (
                status.startswith("2")
                and "content" in answer
                and not (
                    schema or "text/plain" in answer["content"] or "text/html" in answer["content"]
                )
            ):
                untyped.append(f"{method} {path} {status}: no schema")
    assert not with_422, with_422
    assert not untyped, "\n".join(untyped)


def test_errors_are_one_model_and_the_click_schema_is_the_workers() -> None:
    import msgspec

    from stream.events import WireClick

    spec = _spec()
    schemas = spec["components"]["schemas"]
    assert schemas["Error"]["required"] == ["error"]
    for method, path, op in _operations(spec):
        for status, answer in op["responses"].items():
            # /health's 503 is its report ("degraded" and why), not an error.
            if status[0] in "45" and path != "/health":
                schema = answer["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Error"}, (method, path, status)
    (_,), components = msgspec.json.schema_components([WireClick])
    posted = spec["paths"]["/v1/{tenant}/events"]["post"]["requestBody"]
    one = posted["content"]["application/json"]["schema"]["oneOf"][0]
    assert one == {"$ref": "#/components/schemas/WireClick"}
    assert schemas["WireClick"]["properties"] == components["WireClick"]["properties"]


@pytest.mark.parametrize(
    "error", ["RedisClusterException", "SlotNotCoveredError", "ConnectionError"]
)
def test_redis_away_outside_a_routes_own_handling_is_a_503_not_a_500(error: str) -> None:
    import asyncio
    import json

    import redis.exceptions

    from stream.api.context import WebContext
    from stream.api.server import create_api
    from stream.config import Settings

    settings = Settings(admin_token="t" * 32)
    api = create_api(WebContext(settings, counters=dict, models=None, serving=None))  # type: ignore[arg-type]

    @api.get("/raises")
    async def raises() -> None:
        raise getattr(redis.exceptions, error)("no node answered")

    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/raises",
        "raw_path": b"/raises",
        "query_string": b"",
        "headers": [],
        "http_version": "1.1",
        "scheme": "http",
        "server": ("test", 80),
        "client": ("test", 1),
        "root_path": "",
    }
    try:
        asyncio.run(api(scope, receive, send))
    except Exception:  # an error no handler answered: the server would send a 500
        pass
    status = next((m["status"] for m in sent if m["type"] == "http.response.start"), 500)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert status == 503
    assert json.loads(body) == {"error": "Redis unavailable; try again"}
