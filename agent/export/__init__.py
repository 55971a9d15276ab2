"""Exporters: the agent's spans and stats in other systems' formats.

Each exporter is a subscriber of the agent's socket.  Their libraries
(opentelemetry-proto, protobuf, grpcio, googleapis-common-protos,
prometheus-client) are optional extras of the package: the agent never
imports this package, and a command whose library is missing says which
package to install.
"""

from __future__ import annotations

__all__ = ["missing_package_message"]

# Top-level module -> the distribution that provides it.
_DISTRIBUTIONS = {
    "opentelemetry": "opentelemetry-proto",
    "google.protobuf": "protobuf",
    "google.rpc": "googleapis-common-protos",
    "google": "protobuf",
    "grpc": "grpcio",
    "prometheus_client": "prometheus-client",
}
_EXTRA = {"otlp": "otlp", "prometheus": "prometheus"}


def missing_package_message(command: str, exc: ModuleNotFoundError) -> str:
    """One line naming the package to install for ``sidetrace export COMMAND``."""
    name = exc.name or ""
    package = next((dist for module, dist in _DISTRIBUTIONS.items()
                    if name == module or name.startswith(module + ".")), name or "?")
    extra = _EXTRA.get(command, "export")
    return (f"sidetrace export {command} needs the Python package {package} "
            f"(pip install {package}, or pip install 'sidetrace[{extra}]')")
