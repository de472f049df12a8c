# Scenarios against the Channels site over the socket; prints a JSON summary. argv: mode, URL.
import json, os, sys

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

mode, url = sys.argv[1], sys.argv[2]
out = {}

if mode == "http":
    # A browser-like session: the form's GET sets the CSRF cookie, the POST sends it back
    # with the token; the same POST without them is refused.
    import requests

    s = requests.Session()
    r = s.get(url + "/form/", timeout=10)
    out["get_status"] = r.status_code
    out["cookie"] = "csrftoken" in s.cookies
    token = r.json()["csrf"]
    r = s.post(url + "/form/", data={"name": "ada", "csrfmiddlewaretoken": token}, timeout=10)
    out["post_status"] = r.status_code
    out["post"] = r.json() if r.status_code == 200 else r.text
    r = requests.post(url + "/form/", data={"name": "eve"}, timeout=10)
    out["forged_status"] = r.status_code
elif mode == "echo":
    with connect(url, max_size=None, open_timeout=10, close_timeout=5) as ws:
        bad = 0
        for i in range(100):
            msg = f"text {i} " + "é" * i if i % 2 == 0 else os.urandom(1 + i * 37)
            ws.send(msg)
            back = ws.recv(timeout=10)
            bad += not (back == msg and type(back) is type(msg))
        out["mismatches"] = bad
        ws.send("close please")
        try:
            ws.recv(timeout=10)
        except ConnectionClosed as e:
            out["close_code"] = e.rcvd.code if e.rcvd else None
elif mode == "chat":
    # Two members of one room and one of another: a message reaches the room only.
    with connect(url + "lobby/", open_timeout=10) as a, \
            connect(url + "lobby/", open_timeout=10) as b, \
            connect(url + "attic/", open_timeout=10) as c:
        a.send("hello from a")
        out["a_got"] = [a.recv(timeout=10)]
        out["b_got"] = [b.recv(timeout=10)]
        b.send("hi from b")
        out["a_got"].append(a.recv(timeout=10))
        out["b_got"].append(b.recv(timeout=10))
        c.send("alone")
        # The attic's own message is the first thing its member sees.
        out["c_got"] = c.recv(timeout=10)
        # After a leaves, the room still reaches b.
        a.close()
        b.send("still here")
        out["b_after"] = b.recv(timeout=10)
print(json.dumps(out))
