"""Imported by every Python process of a deployment test (its directory is put on
``PYTHONPATH``): when ``ATRACK_TEST_LOG`` names a file, the ``atrack`` logger writes
there at DEBUG, one line per record with the process id, so a test can read what each
worker's SDK reported (``A-Track delivery record (pid N, ...): ... retried ...``)."""

from __future__ import annotations

import logging
import os

_path = os.environ.get("ATRACK_TEST_LOG")
if _path:
    _handler = logging.FileHandler(_path)
    _handler.setFormatter(logging.Formatter("%(process)d %(levelname)s %(message)s"))
    _logger = logging.getLogger("atrack")
    _logger.addHandler(_handler)
    _logger.setLevel(logging.DEBUG)
