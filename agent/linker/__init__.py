"""Linking spans into traces: parents and trace ids (``SpanLinker``).

The stage after the pipeline: spans come in as their exchanges complete and
leave, to the span server, with their trace id and parent.  ``_linker`` holds
the linker and the rules across connections, ``_local`` the rules inside one
process, ``_around`` those that read what a thread did around a call (loop
order, runtime context, worker handoff), ``_node`` what is kept of each span
and the words links are labelled with, ``_due`` the queues of spans waiting
for a time.  How and why:
docs/trace-linking.md.
"""

from ._linker import ADVANCE_EVERY_NS, RETRY_NS, SpanLinker
from ._local import (CALL_RATIO_WINDOW, FORWARDING_MAX_DISAGREE_RATIO, FORWARDING_MIN_AGREE,
                     RELAY_MAX_CALLS_PER_REQUEST, RELAY_MIN_REQUESTS)
from ._node import (ADDRESS_TIME, AFTER_REPLY, AFTER_REQUEST, AMBIGUOUS, ASYNCIO_TASK, BUSY_WORKERS,
                    CANDIDATES_ATTR, CONFIDENCE_ATTR, CONFIDENCES, CONTENT, EXACT, HANDOFF, HEURISTIC,
                    MEMORY_BOUND, NO_CLIENT_SPAN, NO_SERVER_SPAN, NODE_ASYNC_ID, NONE, ONLY_CONTAINER,
                    ORDER, OTHER_THREAD, REASON_ATTR, REQUEST_ORDER, RESPONSE_ORDER, RESPONSE_WRITER,
                    RUNTIME, SAME_REQUEST, THREAD, WILDCARDS, normal_address)

__all__ = [
    "ADDRESS_TIME", "ADVANCE_EVERY_NS", "AFTER_REPLY", "AFTER_REQUEST", "AMBIGUOUS", "ASYNCIO_TASK",
    "BUSY_WORKERS", "CALL_RATIO_WINDOW", "CANDIDATES_ATTR", "CONFIDENCES", "CONFIDENCE_ATTR", "CONTENT", "EXACT",
    "FORWARDING_MAX_DISAGREE_RATIO", "FORWARDING_MIN_AGREE", "HANDOFF", "HEURISTIC",
    "MEMORY_BOUND", "NODE_ASYNC_ID", "NONE", "NO_CLIENT_SPAN", "NO_SERVER_SPAN", "ONLY_CONTAINER",
    "ORDER", "OTHER_THREAD", "REASON_ATTR", "RELAY_MAX_CALLS_PER_REQUEST", "RELAY_MIN_REQUESTS",
    "REQUEST_ORDER", "RESPONSE_ORDER", "RESPONSE_WRITER", "RETRY_NS", "RUNTIME", "SAME_REQUEST",
    "SpanLinker", "THREAD", "WILDCARDS", "normal_address",
]
