"""Intake: from the tracer's per-CPU perf rings to events in timestamp order.

The first stage of the agent.  One reader task per CPU (``Intake.read``)
drains its ring; each record is a batch of events (``_batches``: the batch
format and its split); the merge (``_merge``) holds events until every CPU
is complete past them and releases them in timestamp order to the pipeline.
"""

from ._batches import (BATCH_COUNTER_FIRST_SLOT, BATCH_COUNTER_NAMES, BATCH_HEADER_SIZE, BATCH_KIND,
                       BATCH_LAYOUT, EVENT_ALIGN, Batch, CorruptBatch, FlushReason, split_batch)
from ._merge import OUTPUT_MARGIN_NS, CpuMerger
from ._reader import READ_CHUNK_BYTES, RING_POLL_SECONDS, Intake

__all__ = [
    "BATCH_COUNTER_FIRST_SLOT", "BATCH_COUNTER_NAMES", "BATCH_HEADER_SIZE", "BATCH_KIND", "BATCH_LAYOUT",
    "EVENT_ALIGN", "OUTPUT_MARGIN_NS", "READ_CHUNK_BYTES", "RING_POLL_SECONDS", "Batch", "CorruptBatch", "CpuMerger",
    "FlushReason", "Intake", "split_batch",
]
