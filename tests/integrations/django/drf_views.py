"""Django REST framework views for the DRF test: the tracker reached as ``request.atrack``
through DRF's ``Request`` (it proxies to Django's ``HttpRequest``)."""

from __future__ import annotations

from typing import Any

from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from tests.integrations.framework_apps import answer


class WhoView(APIView):
    authentication_classes: list[Any] = []
    permission_classes: list[Any] = []
    renderer_classes = [JSONRenderer]

    def get(self, request: Request) -> Response:
        assert isinstance(request, Request)
        return Response(answer(request.atrack, request.query_params.get("tag", "")))
