"""HTTP/2 frames by hand (hpack for header blocks, no state machine): what a well-behaved
client library refuses to send. `python h2raw.py SCENARIO PORT [ARG]` prints one JSON line."""
import json
import socket
import struct
import sys

from hpack import Decoder, Encoder

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
END_STREAM, ACK, END_HEADERS = 1, 1, 4


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


class Conn:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.s.settimeout(20)
        self.enc = Encoder()
        self.dec = Decoder()
        self.buf = b""
        self.closed = False
        self.goaway = None
        self.resets = {}
        self.responses = {}
        self.s.sendall(PREFACE + frame(SETTINGS, 0, 0))
        self.until(lambda f: f[0] == SETTINGS and not f[1] & ACK)
        self.send(frame(SETTINGS, ACK, 0))

    def block(self, path, method="GET", extra=()):
        return self.enc.encode([(":method", method), (":scheme", "http"),
                                (":authority", "t"), (":path", path)] + list(extra))

    def headers(self, stream, path, method="GET", end_stream=True, extra=()):
        flags = END_HEADERS | (END_STREAM if end_stream else 0)
        return frame(HEADERS, flags, stream, self.block(path, method, extra))

    def split_headers(self, stream, block):
        """A header block in frames of at most 16 KiB (HEADERS, then CONTINUATION)."""
        parts = [block[i:i + 16384] for i in range(0, len(block), 16384)]
        out = b""
        for i, part in enumerate(parts):
            kind = HEADERS if i == 0 else CONTINUATION
            flags = (END_STREAM if i == 0 else 0) | (END_HEADERS if i == len(parts) - 1 else 0)
            out += frame(kind, flags, stream, part)
        return out

    def send(self, data):
        """Sends, unless the server has closed; returns whether it all went."""
        try:
            self.s.sendall(data)
            return True
        except OSError:
            self.closed = True
            return False

    def read_frame(self):
        while len(self.buf) < 9 or len(self.buf) < 9 + int.from_bytes(self.buf[:3], "big"):
            try:
                d = self.s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                d = b""
            if not d:
                self.closed = True
                return None
            self.buf += d
        n = int.from_bytes(self.buf[:3], "big")
        f = (self.buf[3], self.buf[4], int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF, self.buf[9:9 + n])
        self.buf = self.buf[9 + n:]
        kind, flags, stream, payload = f
        if kind == GOAWAY:
            self.goaway = int.from_bytes(payload[4:8], "big")
        elif kind == RST_STREAM:
            self.resets[stream] = int.from_bytes(payload[:4], "big")
        elif kind == HEADERS:
            # A response's first field is its (static-table) :status.
            status = self.status_of(payload, flags)
            self.responses.setdefault(stream, {"status": status, "body": b""})
        elif kind == DATA and stream in self.responses:
            self.responses[stream]["body"] += payload
        if kind == PING and not flags & ACK:
            self.send(frame(PING, ACK, 0, payload))
        return f

    def until(self, done):
        """Reads frames until `done(frame)` or the connection closes; True if done."""
        while True:
            f = self.read_frame()
            if f is None:
                return False
            if done(f):
                return True

    def status_of(self, payload, flags):
        """The :status of a response's header block (one decoder: the blocks share a table)."""
        if flags & 0x8:  # PADDED
            payload = payload[1:len(payload) - payload[0]]
        if flags & 0x20:  # PRIORITY
            payload = payload[5:]
        return int(dict(self.dec.decode(payload)).get(":status", "0"))

    def drain_input(self):
        """Takes what the server sent so far, without waiting (parsed later)."""
        import select
        while select.select([self.s], [], [], 0)[0]:
            try:
                d = self.s.recv(1 << 20)
            except OSError:
                d = b""
            if not d:
                return
            self.buf += d

    def result(self, **more):
        out = {"goaway": self.goaway, "closed": self.closed,
               "resets": {str(k): v for k, v in self.resets.items()},
               "statuses": {str(k): v["status"] for k, v in self.responses.items()}}
        out.update(more)
        return out


def to_the_end(c):
    c.until(lambda f: False)


def rapid_reset(port, n):
    """HEADERS then RST_STREAM(CANCEL), n times in one write (CVE-2023-44487)."""
    c = Conn(port)
    out = b"".join(c.headers(1 + 2 * i, "/static/a.txt") + frame(RST_STREAM, 0, 1 + 2 * i, struct.pack(">I", 8))
                   for i in range(n))
    c.send(out)
    c.until(lambda f: f[0] == GOAWAY)
    to_the_end(c)
    return c.result()


def continuation(port, mode):
    """A header block that never ends: tiny CONTINUATION frames, or large ones carrying one
    ever-growing field (CVE-2024-27316 class)."""
    c = Conn(port)
    if mode == "tiny":
        block = c.block("/static/a.txt")
        c.send(frame(HEADERS, END_STREAM, 1, block[:2]))
        sent = 0
        for _ in range(200):
            if not c.send(b"".join(frame(CONTINUATION, 0, 1, b"\x00") for _ in range(1000))):
                break
            sent += 1000
    else:
        # A literal field, new name, whose value's length says 64 MiB: the value then streams.
        value_len = 64 << 20
        prefix = bytearray(b"\x00\x05x-big")
        prefix += b"\x7f" + encode_int_rest(value_len - 127)
        first = c.block("/static/a.txt") + bytes(prefix)
        c.send(frame(HEADERS, END_STREAM, 1, first))
        chunk = frame(CONTINUATION, 0, 1, b"a" * 16384)
        sent = 0
        while sent < value_len and c.send(chunk):
            sent += 16384
    c.until(lambda f: f[0] == GOAWAY)
    to_the_end(c)
    return c.result(sent=sent)


def encode_int_rest(n):
    out = bytearray()
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def tiny_frames(port, kind):
    """Many tiny frames: one-byte DATA on a stream whose app does not read, WINDOW_UPDATEs of
    one byte, or PINGs, written without reading the answers."""
    c = Conn(port)
    c.send(c.headers(1, "/asgi/slow?sleep=30", method="POST", end_stream=False))
    one = {
        "data": frame(DATA, 0, 1, b"x"),
        "window_update": frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1)),
        "ping": frame(PING, 0, 0, b"12345678"),
    }[kind]
    batch = one * 1000
    sent = 0
    for _ in range(200):
        # The server's answers (PING ACKs) are taken as they come, as a client would.
        c.drain_input()
        if not c.send(batch):
            break
        sent += 1000
    c.send(frame(RST_STREAM, 0, 1, struct.pack(">I", 8)))
    # The connection still answers a PING (or has closed).
    c.send(frame(PING, 0, 0, b"lastping"))
    c.until(lambda f: f[0] == GOAWAY or (f[0] == PING and f[1] & ACK and f[3] == b"lastping"))
    alive = not c.closed and c.goaway is None
    return c.result(sent=sent, alive=alive)


def concurrent(port, n):
    """n streams at once to a slow route: past the server's max concurrent streams the rest
    are refused."""
    c = Conn(port)
    c.send(b"".join(c.headers(1 + 2 * i, "/asgi/slow?sleep=1") for i in range(n)))
    done = set()

    def settled(f):
        kind, flags, stream, _ = f
        if kind == RST_STREAM or (kind in (DATA, HEADERS) and flags & END_STREAM):
            done.add(stream)
        return len(done) == n
    c.until(settled)
    return c.result()


def drain(port, pid):
    """A slow request in flight while the server drains: GOAWAY, the answer, then the close."""
    import os
    import signal
    c = Conn(port)
    c.send(c.headers(1, "/asgi/slow?sleep=1"))
    os.kill(pid, signal.SIGTERM)
    to_the_end(c)
    return c.result(body=c.responses.get(1, {}).get("body", b"").decode())


def big_header(port, size):
    """A request with one large field, then a plain one on the same connection."""
    c = Conn(port)
    block = c.block("/static/a.txt", extra=[("x-big", "a" * size)])
    c.send(c.split_headers(1, block))
    c.until(lambda f: f[2] == 1 and (f[0] == RST_STREAM or (f[0] in (HEADERS, DATA) and f[1] & END_STREAM)))
    c.send(c.headers(3, "/static/a.txt"))
    c.until(lambda f: f[2] == 3 and f[0] in (HEADERS, DATA) and f[1] & END_STREAM)
    return c.result()


def idle(port, path):
    """One request, then nothing: the server says GOAWAY and closes."""
    c = Conn(port)
    c.send(c.headers(1, path))
    to_the_end(c)
    return c.result()


def preface_only(port):
    """The preface and nothing more (not even SETTINGS): closed after header_timeout."""
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(20)
    s.sendall(PREFACE)
    got = b""
    while True:
        try:
            d = s.recv(65536)
        except (ConnectionResetError, socket.timeout):
            d = b""
        if not d:
            break
        got += d
    return {"closed": True, "got_settings": len(got) >= 9 and got[3] == SETTINGS}


if __name__ == "__main__":
    scenario, port = sys.argv[1], int(sys.argv[2])
    arg = sys.argv[3] if len(sys.argv) > 3 else None
    run = {
        "rapid_reset": lambda: rapid_reset(port, int(arg)),
        "continuation": lambda: continuation(port, arg),
        "tiny_frames": lambda: tiny_frames(port, arg),
        "concurrent": lambda: concurrent(port, int(arg)),
        "drain": lambda: drain(port, int(arg)),
        "idle": lambda: idle(port, arg),
        "big_header": lambda: big_header(port, int(arg)),
        "preface_only": lambda: preface_only(port),
    }[scenario]
    print(json.dumps(run()))
