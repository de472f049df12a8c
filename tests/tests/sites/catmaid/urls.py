from django.contrib import admin
from django.http import HttpResponse, HttpResponseRedirect
from django.urls import path


def cookies(request):
    r = HttpResponse("cookies", content_type="text/plain")
    r.set_cookie("a", "1")
    r.set_cookie("b", "2", httponly=True)
    return r


def unmounted_redirect(request):
    # An app that ignores its mount point: the proxy's redirect rule puts /catmaid back.
    return HttpResponseRedirect("/admin/")


def whoami(request):
    from gevent import monkey

    gevent = monkey.is_module_patched("socket")
    return HttpResponse(f"{request.path} gevent={gevent}", content_type="text/plain")


urlpatterns = [
    path("admin/", admin.site.urls),
    path("cookies/", cookies),
    path("unmounted/", unmounted_redirect),
    path("whoami/", whoami),
]
