"""Application protocols: detection, parsing and span description.

``REGISTRY`` lists the handler classes in detection order: the most
distinctive, cheapest checks first.
"""

from ._base import EGRESS, INGRESS, ConnectionHints, ProtocolHandler, SpanFacts
from .dns import DnsHandler
from .http import Http1Handler
from .http2 import Http2Handler
from .memcached import MemcachedHandler
from .mysql import MysqlHandler
from .postgres import PostgresHandler
from .redis import RedisHandler

REGISTRY: tuple[type[ProtocolHandler], ...] = (
    Http1Handler,
    Http2Handler,
    PostgresHandler,
    MysqlHandler,
    RedisHandler,
    MemcachedHandler,
    DnsHandler,  # last: UDP datagrams and bare TCP messages are the weakest signatures
)

__all__ = ["EGRESS", "INGRESS", "REGISTRY", "ConnectionHints", "DnsHandler", "Http1Handler",
           "Http2Handler", "MemcachedHandler", "MysqlHandler",
           "PostgresHandler", "ProtocolHandler", "RedisHandler", "SpanFacts"]
