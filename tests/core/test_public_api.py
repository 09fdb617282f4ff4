"""The package's public names are exactly the documented ones, and importing the core
pulls in no web framework."""

from __future__ import annotations

import subprocess
import sys

import pytest

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


@pytest.mark.parametrize("package", ["atrack_core", "atrack_integrations"])
def test_py_typed_marker_ships(package: str) -> None:
    # SPEC 1: the distribution is typed; both import packages carry the PEP 561 marker,
    # else type checkers treat `from atrack_integrations.asgi import ...` as untyped.
    from importlib.resources import files

    assert files(package).joinpath("py.typed").is_file()
