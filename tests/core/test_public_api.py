"""The package's public names are exactly the documented ones, and importing the core
pulls in no web framework."""

from __future__ import annotations

import subprocess
import sys

import atrack_core

# SPEC section 3, plus the additions the README documents.
SPEC_NAMES = {
    "ATrackSdk",
    "Options",
    "InitPayload",
    "UserContext",
    "EventPayload",
    "Attributes",
    "InitResult",
    "User",
    "RequestContextInput",
    "build_init_payload",
    "Storage",
    "MemoryStorage",
    "FileStorage",
    "ATrackError",
}
DOCUMENTED_EXTRAS = {
    "DEFAULT_SCRUB_PARAMS",
    "FILTERED",
    "ContextConfig",
    "RequestView",
    "build_request_context",
    "parse_cookies",
    "Call",
    "DeliveryError",
    "KeyRejectedError",
    "NoUserError",
    "QueueFullError",
    "RedisStorage",
    "__version__",
}


def test_all_is_exactly_the_documented_names() -> None:
    assert set(atrack_core.__all__) == SPEC_NAMES | DOCUMENTED_EXTRAS
    assert len(atrack_core.__all__) == len(set(atrack_core.__all__))


def test_every_exported_name_resolves() -> None:
    for name in atrack_core.__all__:
        assert getattr(atrack_core, name) is not None


def test_version_is_the_package_version() -> None:
    from importlib.metadata import version

    assert atrack_core.__version__ == version("a-track-sdk")


def test_import_core_imports_no_framework() -> None:
    code = (
        "import sys, atrack_core, atrack_core.testing, atrack_integrations;"
        "bad = [m for m in ('starlette','fastapi','django','flask','werkzeug','redis','uvicorn')"
        " if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_py_typed_marker_ships() -> None:
    from importlib.resources import files

    assert files("atrack_core").joinpath("py.typed").is_file()
