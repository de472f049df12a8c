# A WSGI app that streams: it yields chunk-0 at once and each next chunk only when the test
# creates the file gate-<i> in $STREAM_GATES, so the test knows what the client may have seen.
import os
import time


def application(environ, start_response):
    gates = os.environ["STREAM_GATES"]

    def body():
        for i in range(4):
            if i:
                gate = os.path.join(gates, f"gate-{i}")
                deadline = time.monotonic() + 30
                while not os.path.exists(gate):
                    if time.monotonic() > deadline:
                        yield b"gate timed out\n"
                        return
                    time.sleep(0.01)
            yield f"chunk-{i}\n".encode()

    start_response("200 OK", [("Content-Type", "text/plain")])
    return body()
