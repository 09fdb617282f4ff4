"""``application`` for gunicorn in the server tests (DJANGO_SETTINGS_MODULE is set by
the test)."""

from django.core.wsgi import get_wsgi_application

application = get_wsgi_application()
