"""The optional Django app: add ``"atrack_integrations.django"`` to ``INSTALLED_APPS``
to get the A-Track system checks (``manage.py check``). The middleware works without it.
"""

from __future__ import annotations

from django.apps import AppConfig


class AtrackConfig(AppConfig):  # type: ignore[misc]  # no Django stubs
    name = "atrack_integrations.django"
    label = "atrack"
    verbose_name = "A-Track"

    def ready(self) -> None:
        # Registered here, not at import: checks belong to the app being installed.
        from django.core import checks

        from .checks import check_settings

        checks.register(check_settings)
