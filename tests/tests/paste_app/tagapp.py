"""The PasteDeploy fixtures of tests/tests/paste.rs: a Pyramid app, a filter that tags
responses, and a plain app for a second name in the same .ini."""
import logging

from pyramid.config import Configurator
from pyramid.response import Response

log = logging.getLogger("tagapp")


def hello(request):
    log.info("tagapp served %s", request.path)
    s = request.registry.settings
    return Response(f"{s['greeting']} {request.script_name}|{request.path_info} here={s['site_dir']}")


def main(global_config, **settings):
    """The Pyramid app; `site_dir` is `%(here)s` in the .ini, the file's directory."""
    with Configurator(settings=settings) as config:
        config.add_route("hello", "/hello")
        config.add_view(hello, route_name="hello")
        return config.make_wsgi_app()


def make_filter(global_config, tag="tagged"):
    """A filter: adds X-Tag to every response of the app it wraps."""
    def wrap(app):
        def tagged(environ, start_response):
            def start(status, headers, exc_info=None):
                return start_response(status, headers + [("X-Tag", tag)], exc_info)
            return app(environ, start)
        return tagged
    return wrap


def admin(global_config, role="none"):
    """A plain WSGI app under another name, picked with --paste FILE#admin."""
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"admin {role} {environ['PATH_INFO']}".encode()]
    return app
