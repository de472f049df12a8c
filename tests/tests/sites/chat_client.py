# The Python websockets client against the Channels echo consumer through the proxy: many
# text and binary messages, a close code each way; a JSON summary on stdout. argv: ws URL.
import json
import os
import sys

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

url = sys.argv[1]
out = {}
with connect(url, max_size=None, open_timeout=10, close_timeout=5) as ws:
    ok = bad = 0
    for i in range(300):
        if i % 2 == 0:
            msg = f"text {i} " + "é" * (i % 97)
        else:
            msg = os.urandom(1 + i * 37)
        ws.send(msg)
        back = ws.recv(timeout=10)
        if back == msg and type(back) is type(msg):
            ok += 1
        else:
            bad += 1
    out.update(ok=ok, bad=bad)
    ws.close(4001, "client-bye")
with connect(url, open_timeout=10, close_timeout=5) as ws:
    ws.send("close please")
    try:
        ws.recv(timeout=10)
        out["server_close"] = None
    except ConnectionClosed as e:
        out["server_close"] = e.rcvd.code if e.rcvd else None
print(json.dumps(out))
