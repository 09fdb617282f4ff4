"""Command-line arguments every gunicorn the tests start needs."""

from __future__ import annotations


def no_control_socket() -> list[str]:
    """gunicorn 25+ opens a control socket at a fixed path in $HOME by default: two
    masters at once (parallel test runs, or two tests) would fight over it."""
    from gunicorn.config import KNOWN_SETTINGS

    if any(setting.name == "control_socket_disable" for setting in KNOWN_SETTINGS):
        return ["--no-control-socket"]
    return []
