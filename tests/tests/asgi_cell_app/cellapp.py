"""A raw ASGI app (no packages needed) that tells which cell answered: its pid, the scope's
client and scheme, and its lifespan events as lines of lifespan.log next to this module."""
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def mark(text):
    with open(os.path.join(HERE, "lifespan.log"), "a") as f:
        f.write(text + "\n")


def facts(scope):
    headers = dict(scope["headers"])
    return {
        "pid": os.getpid(),
        "client": list(scope["client"]),
        "scheme": scope["scheme"],
        "host": headers.get(b"host", b"").decode("latin-1"),
        "root_path": scope["root_path"],
        "path": scope["path"],
    }


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                mark(f"startup {os.getpid()}")
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                mark(f"shutdown {os.getpid()}")
                await send({"type": "lifespan.shutdown.complete"})
                return
    elif scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": json.dumps(facts(scope))})
        while (await receive())["type"] != "websocket.disconnect":
            pass
    else:
        body = json.dumps(facts(scope)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})
