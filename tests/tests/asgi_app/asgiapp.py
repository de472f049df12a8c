"""The ASGI test app: Starlette for the framework paths, raw ASGI callables for the protocol
edge cases. Files it writes and waits for live next to this module (the test's site)."""
import asyncio
import contextlib
import os

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

HERE = os.path.dirname(os.path.abspath(__file__))


def mark(name, text):
    with open(os.path.join(HERE, name), "a") as f:
        f.write(text + "\n")


async def wait_file(name):
    while not os.path.exists(os.path.join(HERE, name)):
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def lifespan(app):
    mark("lifespan.log", f"startup {os.getpid()}")
    yield {"greeting": "hi from lifespan"}
    mark("lifespan.log", f"shutdown {os.getpid()}")


async def hello(request):
    return PlainTextResponse(request.state.greeting)


async def scope(request):
    s = request.scope
    return JSONResponse(
        {
            "type": s["type"],
            "asgi": s["asgi"],
            "http_version": s["http_version"],
            "method": s["method"],
            "scheme": s["scheme"],
            "path": s["path"],
            "raw_path": s["raw_path"].decode("latin-1"),
            "query_string": s["query_string"].decode("latin-1"),
            "root_path": s["root_path"],
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in s["headers"]],
            "client": s["client"][0],
            "server_port": s["server"][1],
            "extensions": s["extensions"],
            "route_path": request.url.path,
        }
    )


async def count(request):
    """Streams back the running byte count after each piece of the request body."""

    async def gen():
        n = 0
        async for chunk in request.stream():
            if chunk:
                n += len(chunk)
                yield f"{n}\n"
        yield "end\n"

    return StreamingResponse(gen(), media_type="text/plain")


async def gated(request):
    async def gen():
        yield "first\n"
        await wait_file("gate-stream")
        yield "second\n"

    return StreamingResponse(gen(), media_type="text/plain")


async def background(request):
    async def later():
        await wait_file("gate-bg")
        mark("bg.log", "background ran")

    return PlainTextResponse("queued", background=BackgroundTask(later))


async def slow(request):
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        mark("cancelled.log", "cancelled")
        raise
    return PlainTextResponse("late")


async def hold(request):
    await wait_file("gate-hold")
    return PlainTextResponse("held")


starlette_app = Starlette(
    routes=[
        Route("/hello", hello),
        Route("/scope", scope),
        Route("/count", count, methods=["POST"]),
        Route("/gated", gated),
        Route("/background", background),
        Route("/slow", slow),
        Route("/hold", hold),
    ],
    lifespan=lifespan,
)


async def start(send, status=200):
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})


async def raw_boom(scope, receive, send):
    raise ValueError("secret detail of the failure")


async def raw_nostart(scope, receive, send):
    return None


async def raw_early_body(scope, receive, send):
    await send({"type": "http.response.body", "body": b"too early"})


async def raw_midfail(scope, receive, send):
    await start(send)
    await send({"type": "http.response.body", "body": b"partial\n", "more_body": True})
    raise KeyError("failure after the response started")


async def raw_disconnect(scope, receive, send):
    """Streams until the client leaves, and records the event `receive` gives then."""
    await start(send)
    while True:
        try:
            message = await asyncio.wait_for(receive(), 0.05)
        except asyncio.TimeoutError:
            try:
                await send({"type": "http.response.body", "body": b"tick\n", "more_body": True})
            except OSError:
                message = await receive()
            else:
                continue
        if message["type"] == "http.disconnect":
            mark("disconnect.log", message["type"])
            return


async def trailers_start(send, names=b"x-checksum, x-count", extra=()):
    await send({
        "type": "http.response.start",
        "status": 200,
        "trailers": True,
        "headers": [(b"content-type", b"text/plain"), (b"trailer", names), *extra],
    })


async def raw_trailers(scope, receive, send):
    """A body in two pieces (one with ?whole=1), then trailer fields in two messages, named in
    the Trailer header (?undeclared=1 adds one it does not name; ?length=1 a Content-Length)."""
    q = scope["query_string"].decode()
    await trailers_start(send, extra=[(b"content-length", b"10")] if "length" in q else ())
    if "whole" in q:
        await send({"type": "http.response.body", "body": b"all of it\n"})
    else:
        await send({"type": "http.response.body", "body": b"part one\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"part two\n"})
    await send({"type": "http.response.trailers", "headers": [(b"x-checksum", b"abc123")],
                "more_trailers": True})
    fields = [(b"x-count", b"2")]
    if "undeclared" in q:
        fields.append((b"x-undeclared", b"1"))
    await send({"type": "http.response.trailers", "headers": fields})


async def raw_body_after_trailers(scope, receive, send):
    await trailers_start(send)
    await send({"type": "http.response.body", "body": b"body\n"})
    await send({"type": "http.response.trailers", "headers": [(b"x-count", b"1")]})
    await send({"type": "http.response.body", "body": b"late"})


async def raw_trailers_unannounced(scope, receive, send):
    await start(send)
    await send({"type": "http.response.body", "body": b"no trailers promised\n"})
    await send({"type": "http.response.trailers", "headers": [(b"x-count", b"1")]})


async def raw_trailers_early(scope, receive, send):
    await trailers_start(send)
    await send({"type": "http.response.body", "body": b"more to come\n", "more_body": True})
    await send({"type": "http.response.trailers", "headers": [(b"x-count", b"1")]})


RAW = {
    "/raw/trailers": raw_trailers,
    "/raw/body_after_trailers": raw_body_after_trailers,
    "/raw/trailers_unannounced": raw_trailers_unannounced,
    "/raw/trailers_early": raw_trailers_early,
    "/raw/boom": raw_boom,
    "/raw/nostart": raw_nostart,
    "/raw/early": raw_early_body,
    "/raw/midfail": raw_midfail,
    "/raw/disconnect": raw_disconnect,
}


async def app(scope, receive, send):
    """Raw ASGI endpoints first, Starlette for the rest (lifespan included)."""
    if scope["type"] == "http":
        path = scope["path"][len(scope["root_path"]):]
        raw = RAW.get(path)
        if raw is not None:
            return await raw(scope, receive, send)
    await starlette_app(scope, receive, send)


async def failing_lifespan_app(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "database unreachable at startup"})
        return
    raise RuntimeError("never called")


def wsgi_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"wsgi"]
