"""A one-file Django project serving a file with ``FileResponse``, unchanged."""

from __future__ import annotations

import os

import django
from django.conf import settings
from django.core.wsgi import get_wsgi_application
from django.http import FileResponse, HttpRequest, JsonResponse
from django.urls import path

import fastbody

settings.configure(
    DEBUG=False,
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    SECRET_KEY="fastbody-tests",
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
)
django.setup()


def file(request: HttpRequest) -> FileResponse:
    return FileResponse(open(request.GET["path"], "rb"), content_type="application/octet-stream")


def stats(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"pid": os.getpid(), "stats": dict(fastbody.stats())})


urlpatterns = [path("file", file), path("stats", stats)]
app = get_wsgi_application()
