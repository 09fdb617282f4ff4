"""A gunicorn config module for the tests (``-c python:tests.deploy.gunicorn_ready``):
each worker logs ``Worker ready`` once its own signal handlers are installed.

A SIGTERM that reaches a worker before then (while a gevent worker still patches, say)
runs the master's inherited handler in the worker and is lost: the worker then serves
until the master's graceful timeout. Tests that stop gunicorn right after starting it
wait for every worker's line first (:meth:`Server.wait_log`).
"""

from __future__ import annotations

from typing import Any


def post_worker_init(worker: Any) -> None:
    worker.log.info("Worker ready (pid: %s)", worker.pid)
