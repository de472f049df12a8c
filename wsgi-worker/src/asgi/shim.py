# The asyncio side of an ASGI route: one event loop on its own thread. The cell posts
# commands to a Rust queue and wakes the loop through a socket it watches; `receive` and
# `send` are plain coroutines over per-request state, and `send` hands events to Rust at once.
import asyncio, collections, socket, traceback

ASGI = {"version": "3.0", "spec_version": "2.4"}


class ClientDisconnected(OSError):
    """send() after the client left (ASGI 2.4: servers raise a subclass of OSError)."""


class Request:
    __slots__ = ("sink", "queue", "waiter", "resume", "gone", "task")

    def __init__(self, sink):
        self.sink = sink
        self.queue = collections.deque()
        self.waiter = None
        self.resume = None
        self.gone = False
        self.task = None

    async def receive(self):
        if self.queue:
            return self.queue.popleft()
        if self.gone:
            return {"type": "http.disconnect"}
        self.sink.want()
        fut = self.waiter = _state.loop.create_future()
        try:
            return await fut
        finally:
            self.waiter = None

    def feed(self, event):
        w = self.waiter
        if w is not None and not w.done():
            self.waiter = None
            w.set_result(event)
        else:
            self.queue.append(event)

    def disconnect(self):
        if self.gone:
            return
        self.gone = True
        self.feed({"type": "http.disconnect"})
        self.wake()

    def wake(self):
        r = self.resume
        if r is not None and not r.done():
            r.set_result(None)

    async def send(self, message):
        if self.gone:
            raise ClientDisconnected("the client has disconnected")
        if not self.sink.send(message):
            # Past the high-water mark: wait until the cell has passed the body on.
            fut = self.resume = _state.loop.create_future()
            try:
                await fut
            finally:
                self.resume = None


class _State:
    loop = None
    app = None
    bridge = None
    wake = None
    requests = {}
    lifespan_state = {}
    shutdown = None


_state = _State()


async def _run(rid, scope, req):
    try:
        await _state.app(scope, req.receive, req.send)
    except asyncio.CancelledError:
        req.sink.finish("request_timeout: the request's task was cancelled")
    except BaseException:
        req.sink.finish(traceback.format_exc())
    else:
        req.sink.finish(None)
    finally:
        _state.requests.pop(rid, None)


def _on_wake():
    try:
        _state.wake.recv(4096)
    except (BlockingIOError, InterruptedError):
        pass
    requests = _state.requests
    for cmd in _state.bridge.drain():
        kind = cmd[0]
        if kind == 0:  # start: (0, rid, scope, sink)
            _, rid, scope, sink = cmd
            scope["state"] = dict(_state.lifespan_state)
            req = Request(sink)
            requests[rid] = req
            req.task = _state.loop.create_task(_run(rid, scope, req))
            continue
        req = requests.get(cmd[1])
        if kind == 1:  # shutdown
            if _state.shutdown is not None and not _state.shutdown.done():
                _state.shutdown.set_result(None)
        elif req is None:
            continue
        elif kind == 2:  # body: (2, rid, bytes, more)
            req.feed({"type": "http.request", "body": cmd[2], "more_body": cmd[3]})
        elif kind == 3:  # disconnect
            req.disconnect()
        elif kind == 4:  # cancel
            req.gone = True
            req.task.cancel()
        elif kind == 5:  # resume
            req.wake()


async def _lifespan(report):
    """Runs the lifespan scope; `report(kind, text)` tells the Rust side how it went."""
    started = False
    asked = False

    async def receive():
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "lifespan.startup"}
        await _state.shutdown
        return {"type": "lifespan.shutdown"}

    async def send(message):
        nonlocal started
        t = message["type"]
        if t == "lifespan.startup.complete":
            started = True
            report("started", "")
        elif t == "lifespan.startup.failed":
            started = True
            report("failed", message.get("message", ""))
        elif t == "lifespan.shutdown.complete":
            report("stopped", "")
        elif t == "lifespan.shutdown.failed":
            report("stopped", message.get("message", "") or "lifespan.shutdown.failed")
        else:
            raise RuntimeError(f"unexpected lifespan message {t!r}")

    scope = {"type": "lifespan", "asgi": ASGI, "state": _state.lifespan_state}
    try:
        await _state.app(scope, receive, send)
    except BaseException:
        report("raised" if not started else "stopped", traceback.format_exc())
    else:
        report("returned" if not started else "stopped", "")


def serve(app, bridge, fd, lifespan, use_uvloop, report):
    """The loop thread's body: returns when the loop stops."""
    if use_uvloop:
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    _state.loop, _state.app, _state.bridge = loop, app, bridge
    _state.wake = socket.socket(fileno=fd)
    _state.wake.setblocking(False)
    _state.shutdown = loop.create_future()
    loop.add_reader(_state.wake.fileno(), _on_wake)
    if lifespan:
        loop.create_task(_lifespan(report))
    else:
        report("started", "")
    loop.run_forever()
