"""Application protocols: detection, parsing and span description.

Every protocol is a :class:`Handler` (see ``_base`` for the shape they all
share).  ``REGISTRY`` lists the handler classes in detection order: the most
distinctive, cheapest checks first.
"""

from .amqp import AmqpHandler
from ._base import EGRESS, INGRESS, ConnectionHints, Context, Handler, SpanFacts
from .dns import DnsHandler
from .http1 import Http1Handler
from .http2 import Http2Handler
from .kafka import KafkaHandler
from .memcached import MemcachedHandler
from .mongodb import MongoHandler
from .mqtt import MqttHandler
from .mysql import MysqlHandler
from .postgres import PostgresHandler
from .redis import RedisHandler

REGISTRY: tuple[type[Handler], ...] = (
    Http1Handler,
    Http2Handler,
    PostgresHandler,
    MysqlHandler,
    RedisHandler,
    MemcachedHandler,
    # Length-framed protocols: the kernel's guess puts them first where it has one.
    MongoHandler,
    KafkaHandler,
    AmqpHandler,
    MqttHandler,
    DnsHandler,  # last: UDP datagrams and bare TCP messages are the weakest signatures
)

__all__ = ["EGRESS", "INGRESS", "REGISTRY", "AmqpHandler", "ConnectionHints", "Context", "DnsHandler",
           "Handler", "Http1Handler", "Http2Handler", "KafkaHandler", "MemcachedHandler", "MongoHandler",
           "MqttHandler", "MysqlHandler", "PostgresHandler", "RedisHandler", "SpanFacts"]
