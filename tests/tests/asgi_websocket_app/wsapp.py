# Starlette WebSocket endpoints for tests/tests/asgi_websocket.rs.
import asyncio, json, os

from starlette.applications import Starlette
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
            "subprotocols", "client", "server", "raw_path")
    out = {k: s[k].decode() if isinstance(s[k], bytes) else s[k] for k in keys}
    out["headers"] = [[k.decode(), v.decode()] for k, v in s["headers"]]
    out["has_state"] = isinstance(s.get("state"), dict)
    await ws.send_text(json.dumps(out))
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


app = Starlette(routes=[
    WebSocketRoute("/echo", echo),
    WebSocketRoute("/scope", scope),
    WebSocketRoute("/reject", reject),
    WebSocketRoute("/boom", boom),
    WebSocketRoute("/slow", slow),
])
