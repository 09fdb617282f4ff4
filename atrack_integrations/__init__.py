"""Web-framework integrations for the A-Track SDK.

One module per framework (``asgi``, ``fastapi``, ``wsgi``, ``flask``, ``django``), each a
thin adapter over one shared per-request lifecycle. Importing this package imports no
framework; importing a framework module imports only that framework.
"""
