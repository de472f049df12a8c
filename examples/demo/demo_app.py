"""The demo's WSGI app: shows what the embedded interpreter sees."""
import html
import os


def application(environ, start_response):
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>"
        for k, v in sorted(environ.items())
        if isinstance(v, (str, bool, int))
    )
    body = (
        "<!doctype html><title>Portico WSGI demo</title>"
        f"<h1>Hello from cell pid {os.getpid()}</h1><table>{rows}</table>"
    ).encode()
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
    return [body]
