# A scenario against one WebSocket URL with the `websockets` client; prints a JSON summary.
import json, sys, time

from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

mode, url = sys.argv[1], sys.argv[2]
out = {}


def closed(e):
    out["close_code"] = e.rcvd.code if e.rcvd else None
    out["close_reason"] = e.rcvd.reason if e.rcvd else None


try:
    if mode == "echo":
        with connect(url, subprotocols=["chat.v1", "chat.v2"], max_size=None) as ws:
            out["subprotocol"] = ws.subprotocol
            out["accepted_header"] = ws.response.headers.get("x-accepted")
            bad = 0
            for i in range(200):
                text = f"message {i} " + "é" * (i * 7)
                ws.send(text)
                bad += ws.recv() != text
                data = bytes([i % 256]) * (i * 97)
                ws.send(data)
                bad += ws.recv() != data
            # A fragmented message comes back whole.
            ws.send(["frag", "mented"])
            bad += ws.recv() != "fragmented"
            ws.ping(b"are you there").wait(5)
            out["mismatches"] = bad
            ws.close(code=4000, reason="client done")
    elif mode == "server_close":
        with connect(url) as ws:
            ws.send("close-me")
            try:
                ws.recv(timeout=10)
            except ConnectionClosed as e:
                closed(e)
    elif mode == "scope":
        with connect(url + "?a=1", subprotocols=["one", "two"]) as ws:
            out["scope"] = json.loads(ws.recv(timeout=10))
    elif mode == "boom":
        with connect(url) as ws:
            ws.send("go")
            try:
                ws.recv(timeout=10)
            except ConnectionClosed as e:
                closed(e)
    elif mode == "hold":
        with connect(url) as ws:
            ws.send("before")
            out["before"] = ws.recv(timeout=10)
            print("open", flush=True)
            sys.stdin.readline()
            ws.send("after")
            out["after"] = ws.recv(timeout=10)
            ws.close(1000, "done")
    elif mode in ("reject", "deny"):
        with connect(url):
            pass
    elif mode == "big":
        with connect(url, max_size=None) as ws:
            ws.send("small")
            out["small"] = ws.recv(timeout=10)
            try:
                ws.send(b"x" * 100_000)
                ws.recv(timeout=10)
            except ConnectionClosed as e:
                closed(e)
    elif mode == "flood":
        # 200 messages of 1 MiB as fast as the server reads them, then "done".
        with connect(url, max_size=None) as ws:
            for i in range(200):
                ws.send(i.to_bytes(4, "big") + bytes(1 << 20))
            ws.send("done")
            out["app"] = json.loads(ws.recv(timeout=30))
            ws.close(1000, "done")
    elif mode == "idle":
        # Messages for more than twice the 1 s idle timeout keep it open; then silence.
        with connect(url) as ws:
            sent = echoed = 0
            until = time.monotonic() + 2.4
            while time.monotonic() < until:
                ws.send(f"tick {sent}")
                echoed += ws.recv(timeout=10) == f"tick {sent}"
                sent += 1
            out["sent"] = sent
            out["echoed"] = echoed
            try:
                ws.recv(timeout=30)
            except ConnectionClosed as e:
                closed(e)
    else:
        raise SystemExit(f"unknown mode {mode}")
    out["connected"] = True
except InvalidStatus as e:
    out.update(
        connected=False,
        status=e.response.status_code,
        body=(e.response.body or b"").decode(),
        denied_header=e.response.headers.get("x-denied"),
    )
except Exception as e:
    out.update(connected=False, error=f"{type(e).__name__}: {e}")
print(json.dumps(out), flush=True)
