"""Application protocols: detection, parsing and span description.

``REGISTRY`` lists the handler classes in detection order: the most
distinctive, cheapest checks first.
"""

from ._base import EGRESS, INGRESS, ConnectionHints, ProtocolHandler, SpanFacts
from .http import Http1Handler
from .mysql import MysqlHandler
from .postgres import PostgresHandler

REGISTRY: tuple[type[ProtocolHandler], ...] = (
    Http1Handler,
    PostgresHandler,
    MysqlHandler,
)

__all__ = ["EGRESS", "INGRESS", "REGISTRY", "ConnectionHints", "Http1Handler", "MysqlHandler",
           "PostgresHandler", "ProtocolHandler", "SpanFacts"]
