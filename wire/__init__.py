"""sidetrace's wire protocol: what the agent streams to subscribers.

Everything a subscriber needs is here; nothing imports the agent or the BPF
loader.  The contract is schema.cddl, shipped with the package.
"""

from ._client import BlockingSubscriber, Subscription, SubscriptionRefused, open_subscriber
from ._format import format_json, format_pretty, is_terminal_safe, terminal_text
from ._framing import (DEFAULT_MAX_ITEM_SIZE, CborSequenceDecoder, ItemTooLarge, MalformedItem,
                       TruncatedItem, WireError, decode_sequence, encode_item)
from ._schema import (DEFAULT_SOCKET_PATH, MESSAGE_TYPES, SCHEMA_MINOR, SCHEMA_VERSION,
                      SchemaViolation, SpanFilter, local_boot_id, local_host_name, make_error,
                      make_filter, make_hello, make_metrics, make_span, make_stats, schema_text,
                      validate)
from ._peers import PeerCredentials, PeerPolicy, peer_credentials
from ._server import SUBSCRIBER_COUNTS, SpanServer, SubscriberInfo
from ._socketpath import ServerAlreadyRunning, check_socket_path, claim_socket_path

__all__ = [
    "BlockingSubscriber",
    "CborSequenceDecoder",
    "DEFAULT_MAX_ITEM_SIZE",
    "DEFAULT_SOCKET_PATH",
    "ItemTooLarge",
    "MESSAGE_TYPES",
    "MalformedItem",
    "PeerCredentials",
    "PeerPolicy",
    "SCHEMA_MINOR",
    "SCHEMA_VERSION",
    "SUBSCRIBER_COUNTS",
    "SchemaViolation",
    "ServerAlreadyRunning",
    "SpanFilter",
    "SpanServer",
    "SubscriberInfo",
    "Subscription",
    "SubscriptionRefused",
    "TruncatedItem",
    "WireError",
    "check_socket_path",
    "claim_socket_path",
    "decode_sequence",
    "encode_item",
    "format_json",
    "format_pretty",
    "is_terminal_safe",
    "local_boot_id",
    "local_host_name",
    "make_error",
    "make_filter",
    "make_hello",
    "make_metrics",
    "make_span",
    "make_stats",
    "open_subscriber",
    "peer_credentials",
    "schema_text",
    "terminal_text",
    "validate",
]
