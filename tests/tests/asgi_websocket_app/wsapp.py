# Starlette WebSocket endpoints for tests/tests/asgi_websocket.rs.
import asyncio, json, os

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import WebSocketRoute

HERE = os.path.dirname(os.path.abspath(__file__))


def note(name, line):
    with open(os.path.join(HERE, name), "a") as f:
        f.write(line + "\n")


async def echo(ws):
    offered = ws.scope["subprotocols"]
    await ws.accept(subprotocol=offered[-1] if offered else None, headers=[(b"x-accepted", b"yes")])
    while True:
        m = await ws.receive()
        if m["type"] == "websocket.disconnect":
            note("disconnect.log", f"{m['code']}")
            return
        if m.get("text") is not None:
            if m["text"] == "close-me":
                await ws.close(code=4001, reason="bye now")
                return
            await ws.send_text(m["text"])
        else:
            await ws.send_bytes(m["bytes"])


async def scope(ws):
    await ws.accept()
    s = ws.scope
    keys = ("type", "asgi", "http_version", "scheme", "path", "query_string", "root_path",
            "subprotocols", "client", "server", "raw_path", "extensions")
    out = {k: s[k].decode() if isinstance(s[k], bytes) else s[k] for k in keys}
    out["headers"] = [[k.decode(), v.decode()] for k, v in s["headers"]]
    out["has_state"] = isinstance(s.get("state"), dict)
    await ws.send_text(json.dumps(out))
    await ws.close()


async def claims_deflate(ws):
    """Accepts claiming permessage-deflate, which the server does not speak; echoes one text."""
    await ws.accept(headers=[(b"sec-websocket-extensions", b"permessage-deflate")])
    await ws.send_text(await ws.receive_text())
    await ws.close()


async def reject(ws):
    await ws.close()


async def boom(ws):
    await ws.accept()
    await ws.receive_text()
    raise RuntimeError("boom in the websocket handler")


async def slow(ws):
    """Takes one message per 20 ms; "done" answers with how many came and whether in order."""
    await ws.accept()
    count, in_order = 0, True
    while True:
        m = await ws.receive()
        if m["type"] == "websocket.disconnect":
            return
        if m.get("text") == "done":
            await ws.send_text(json.dumps({"count": count, "in_order": in_order}))
            continue
        data = m["bytes"]
        in_order = in_order and int.from_bytes(data[:4], "big") == count
        count += 1
        await asyncio.sleep(0.02)


async def deny(ws):
    """Refuses with a response of its own (the denial response extension): 401, a header, and
    a body streamed in two pieces, the second once the file gate-deny exists (or with ?whole=1
    the body in one piece)."""

    async def pieces():
        yield b"first piece\n"
        while not os.path.exists(os.path.join(HERE, "gate-deny")):
            await asyncio.sleep(0.02)
        yield b"go away\n"

    if ws.query_params.get("whole"):
        denial = PlainTextResponse("go away\n", status_code=401, headers={"x-denied": "yes"})
    else:
        denial = StreamingResponse(
            pieces(), status_code=401, headers={"x-denied": "yes"}, media_type="text/plain")
    await ws.send_denial_response(denial)


class DenyThenAccept:
    """Raw ASGI (Starlette would refuse the second send itself): a denial response started,
    then an accept, which the server's send refuses."""

    async def __call__(self, scope, receive, send):
        await receive()
        await send({"type": "websocket.http.response.start", "status": 402, "headers": []})
        await send({"type": "websocket.accept"})


app = Starlette(routes=[
    WebSocketRoute("/echo", echo),
    WebSocketRoute("/scope", scope),
    WebSocketRoute("/reject", reject),
    WebSocketRoute("/claims_deflate", claims_deflate),
    WebSocketRoute("/boom", boom),
    WebSocketRoute("/slow", slow),
    WebSocketRoute("/deny", deny),
    WebSocketRoute("/deny_then_accept", DenyThenAccept()),
])
