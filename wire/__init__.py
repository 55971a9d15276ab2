"""sidetrace's wire protocol: what the agent streams to subscribers.

Everything a subscriber needs is here; nothing imports the agent or the BPF
loader.  The contract is schema.cddl, shipped with the package.
"""

from ._client import BlockingSubscriber, Subscription, open_subscriber
from ._format import format_json, format_pretty
from ._framing import (DEFAULT_MAX_ITEM_SIZE, CborSequenceDecoder, ItemTooLarge, MalformedItem,
                       TruncatedItem, WireError, decode_sequence, encode_item)
from ._schema import (DEFAULT_SOCKET_PATH, MESSAGE_TYPES, SCHEMA_VERSION, SchemaViolation,
                      SpanFilter, local_boot_id, local_host_name, make_error, make_filter,
                      make_hello, make_span, make_stats, schema_text, validate)
from ._server import ServerAlreadyRunning, SpanServer, SubscriberInfo

__all__ = [
    "BlockingSubscriber",
    "CborSequenceDecoder",
    "DEFAULT_MAX_ITEM_SIZE",
    "DEFAULT_SOCKET_PATH",
    "ItemTooLarge",
    "MESSAGE_TYPES",
    "MalformedItem",
    "SCHEMA_VERSION",
    "SchemaViolation",
    "ServerAlreadyRunning",
    "SpanFilter",
    "SpanServer",
    "SubscriberInfo",
    "Subscription",
    "TruncatedItem",
    "WireError",
    "decode_sequence",
    "encode_item",
    "format_json",
    "format_pretty",
    "local_boot_id",
    "local_host_name",
    "make_error",
    "make_filter",
    "make_hello",
    "make_span",
    "make_stats",
    "open_subscriber",
    "schema_text",
    "validate",
]
