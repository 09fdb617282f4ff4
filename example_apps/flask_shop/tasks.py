"""The Flask shop's background tasks (Celery): a receipt sent after an order.

Used when ``SHOP_CELERY_BROKER`` names a broker (``redis://127.0.0.1:6379/0``; Flask
config key of the same name); without it the shop sends no receipts, and Celery need
not be installed. Run a worker (from the repository root)::

    SHOP_CELERY_BROKER=redis://127.0.0.1:6379/0 ATRACK_PUBLIC_KEY=pub_xxxxx \\
        celery -A example_apps.flask_shop.tasks worker

A task published while a request is handled tracks for that request's user, with the
page's context (``atrack_integrations.celery``); the worker's SDK comes from the
``ATRACK_*`` environment and is flushed when the worker stops.
"""

from __future__ import annotations

import os

from celery import Celery

from atrack_integrations import track
from atrack_integrations.celery import ATrackCelery

celery = Celery("flask_shop", broker=os.environ.get("SHOP_CELERY_BROKER") or None)
celery.conf.update(broker_connection_retry_on_startup=True, task_ignore_result=True)
atrack = ATrackCelery(celery)


@celery.task
def send_receipt(amount: float, currency: str) -> None:
    # ... render and send the e-mail ...
    track("receipt_sent", {"amount": amount, "currency": currency})
