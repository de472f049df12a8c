import os

from django.http import JsonResponse
from django.middleware.csrf import get_token
from django.urls import path


def info(request):
    return JsonResponse({
        "method": request.method,
        "path": request.path,
        "query": request.GET.dict(),
        "host": request.get_host(),
        "pid": os.getpid(),
    })


def form(request):
    # GET hands out the CSRF cookie and token; a POST only arrives here with both.
    if request.method == "POST":
        return JsonResponse({"name": request.POST.get("name"), "posted": True})
    return JsonResponse({"csrf": get_token(request)})


urlpatterns = [path("api/info/", info), path("form/", form)]
