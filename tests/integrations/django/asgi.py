"""``application`` for uvicorn in the server tests (DJANGO_SETTINGS_MODULE is set by
the test)."""

from django.core.asgi import get_asgi_application

application = get_asgi_application()
