"""The apps of http2.rs: one WSGI and one ASGI app that say what they received."""
import asyncio
import json
import time


def wsgi(environ, start_response):
    body = environ["wsgi.input"].read()
    out = json.dumps({
        "protocol": environ["SERVER_PROTOCOL"],
        "host": environ.get("HTTP_HOST"),
        "path": environ["PATH_INFO"],
        "method": environ["REQUEST_METHOD"],
        "len": len(body),
    }).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [out]


async def asgi(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            m = await receive()
            if m["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif m["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    query = scope["query_string"].decode()
    if query.startswith("sleep="):
        # Answers after a while without reading the body (the flood tests' open stream).
        await asyncio.sleep(float(query[len("sleep="):]))
        body = b""
    else:
        body = b""
        while True:
            m = await receive()
            body += m.get("body", b"")
            if not m.get("more_body"):
                break
    out = json.dumps({
        "http_version": scope["http_version"],
        "host": dict(scope["headers"]).get(b"host", b"").decode(),
        "path": scope["path"],
        "method": scope["method"],
        "len": len(body),
    }).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": out})
