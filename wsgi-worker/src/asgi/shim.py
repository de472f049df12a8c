# The asyncio side of a cell's ASGI routes: one event loop on its own thread runs every ASGI
# app of the cell (`_state.apps`, indexed like the Rust side's list). The cell posts
# commands to a Rust queue and wakes the loop through a socket it watches; `receive` and
# `send` are plain coroutines over per-request state, and `send` hands events to Rust at once.
import asyncio, socket, traceback

ASGI = {"version": "3.0", "spec_version": "2.4"}


class ClientDisconnected(OSError):
    """send() after the client left (ASGI 2.4: servers raise a subclass of OSError)."""


class Request:
    __slots__ = ("sink", "queue", "waiter", "resume", "gone", "task")

    def __init__(self, sink):
        self.sink = sink
        # A list, not a deque: most requests never queue anything, and an empty list is cheap.
        self.queue = []
        self.waiter = None
        self.resume = None
        self.gone = False
        self.task = None

    async def receive(self):
        if self.queue:
            return self.queue.pop(0)
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


class WebSocket(Request):
    """A `websocket` scope: the cell reads the client ahead of `receive` (a bounded queue)."""

    __slots__ = ()

    def __init__(self, sink):
        super().__init__(sink)
        self.queue.append({"type": "websocket.connect"})

    async def receive(self):
        if self.queue:
            event = self.queue.pop(0)
        elif self.gone:
            return {"type": "websocket.disconnect", "code": 1006}
        else:
            fut = self.waiter = _state.loop.create_future()
            try:
                event = await fut
            finally:
                self.waiter = None
        if event["type"] == "websocket.receive":
            # The cell reads the client only while few of its messages wait here.
            self.sink.received()
        return event

    def disconnect(self, code=1006):
        if self.gone:
            return
        self.gone = True
        self.feed({"type": "websocket.disconnect", "code": code})
        self.wake()


_Task = asyncio.Task
_NAME = "portico-asgi-request"


class _State:
    loop = None
    bridge = None
    wake = None
    requests = {}
    # Per app: the app, its lifespan state dict, and the future that starts its shutdown.
    apps = []
    lifespan_states = []
    shutdowns = []


_state = _State()


async def _run(app, rid, scope, req):
    try:
        await app(scope, req.receive, req.send)
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
        if kind == 0:  # start: (0, rid, app index, scope, sink)
            _, rid, i, scope, sink = cmd
            scope["state"] = dict(_state.lifespan_states[i])
            req = (WebSocket if scope["type"] == "websocket" else Request)(sink)
            requests[rid] = req
            coro = _run(_state.apps[i], rid, scope, req)
            loop = _state.loop
            if loop.get_task_factory() is None:
                # A named Task: an unnamed one formats "Task-N" for every request.
                req.task = _Task(coro, loop=loop, name=_NAME)
            else:
                # The app's own factory (set in its lifespan startup, say) makes the tasks.
                req.task = loop.create_task(coro, name=_NAME)
            continue
        if kind == 1:  # shutdown: (1, app index)
            fut = _state.shutdowns[cmd[1]]
            if not fut.done():
                fut.set_result(None)
            continue
        req = requests.get(cmd[1])
        if req is None:
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
        elif kind == 6:  # websocket message: (6, rid, str or bytes)
            data = cmd[2]
            if isinstance(data, str):
                req.feed({"type": "websocket.receive", "text": data})
            else:
                req.feed({"type": "websocket.receive", "bytes": data})
        elif kind == 7:  # websocket disconnect: (7, rid, code)
            req.disconnect(cmd[2])


async def _lifespan(i, report):
    """Runs app `i`'s lifespan scope; `report(kind, text)` tells the Rust side how it went."""
    app, state, shutdown = _state.apps[i], _state.lifespan_states[i], _state.shutdowns[i]
    started = False
    asked = False

    async def receive():
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "lifespan.startup"}
        await shutdown
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

    scope = {"type": "lifespan", "asgi": ASGI, "state": state}
    try:
        await app(scope, receive, send)
    except BaseException:
        report("raised" if not started else "stopped", traceback.format_exc())
    else:
        report("returned" if not started else "stopped", "")


def serve(apps, bridge, fd, lifespans, use_uvloop, reports):
    """The loop thread's body: returns when the loop stops. Per app: whether its lifespan runs,
    and where its outcomes are reported."""
    if use_uvloop:
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    _state.loop, _state.bridge = loop, bridge
    _state.apps = list(apps)
    _state.lifespan_states = [{} for _ in apps]
    _state.shutdowns = [loop.create_future() for _ in apps]
    _state.wake = socket.socket(fileno=fd)
    _state.wake.setblocking(False)
    loop.add_reader(_state.wake.fileno(), _on_wake)
    for i, (lifespan, report) in enumerate(zip(lifespans, reports)):
        if lifespan:
            loop.create_task(_lifespan(i, report))
        else:
            report("started", "")
    loop.run_forever()
