"""Record formats derived from agent/_event_layout_decl.py: generated, do not edit.

Regenerate with `make layout` (python -m agent._fastdecode write) after
changing a declaration; tests/unit/test_event_layout.py fails while this
file is stale.  The running agent imports this instead of construct.
"""

EVENT_HEADER_FORMAT = "<LQQqQQLLlLLHBBHHHBB16s16s16sHBB"
EVENT_HEADER_SIZE = 128
EVENT_HEADER_NAMES = (
    "kind", "ts_ns", "conn_id", "ret", "bytes_tx", "bytes_rx", "tgid", "tid", "fd", "tcp_seq",
    "payload_len", "syscall", "direction", "role", "family", "sport", "dport", "l4_proto",
    "flags", "saddr", "daddr", "comm", "app_proto", "tls", "tls_version",
)

BATCH_HEADER_FORMAT = "<LQHH"
BATCH_HEADER_SIZE = 16
BATCH_HEADER_NAMES = (
    "kind", "flush_ns", "count", "reason",
)
