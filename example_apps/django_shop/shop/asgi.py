"""ASGI entry point: ``uvicorn --app-dir example_apps/django_shop shop.asgi:application``.

Under ASGI the A-Track middleware runs natively async (no thread hop)."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")
application = get_asgi_application()
