from django.http import JsonResponse
from django.urls import path


def host(request):
    # What the proxy told the app about the client's Host.
    return JsonResponse({
        "x_forwarded_host": request.META.get("HTTP_X_FORWARDED_HOST"),
        "host": request.get_host(),
        "path": request.path,
    })


urlpatterns = [path("channels/host/", host)]
