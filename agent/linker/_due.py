"""The linker's queues of spans waiting for a time: a deque for the usual order, a heap for the rest."""

from __future__ import annotations

import heapq
from collections import deque

from ._node import _Node

__all__ = ["DueQueue"]


class DueQueue:
    """Nodes in (due time, arrival order) order, as a heap of them would give them.

    Spans arrive about in the order they end, so most are pushed in due
    order: those go to a deque (no tuple, no sifting); the others, and
    retries, to a heap.  A node's due time is its ``end`` plus ``offset``, or
    its ``deadline`` if ``offset`` is None; it must stay the time the node was
    pushed with for as long as the node is not released (a released node has
    nothing left to do here and is dropped when it comes first).
    """

    __slots__ = ("inorder", "last", "heap", "offset")

    def __init__(self, offset: int | None) -> None:
        self.inorder: deque[_Node] = deque()
        self.last = 0
        self.heap: list[tuple[int, int, _Node]] = []
        self.offset = offset

    def __len__(self) -> int:
        return len(self.inorder) + len(self.heap)

    def push(self, node: _Node, at: int) -> None:
        """Queue ``node`` for its due time ``at``."""
        inorder = self.inorder
        if at >= self.last or not inorder:
            inorder.append(node)
            self.last = at
        else:
            heapq.heappush(self.heap, (at, node.order, node))

    def push_at(self, node: _Node, at: int) -> None:
        """Queue ``node`` for any time ``at``."""
        heapq.heappush(self.heap, (at, node.order, node))

    def take_due(self, now: int | None) -> list[_Node]:
        """Remove and return, in order, the nodes due by ``now`` (all, if None)."""
        inorder, heap = self.inorder, self.heap
        offset = self.offset
        out = []
        while True:
            while inorder and inorder[0].released:
                inorder.popleft()
            if inorder:
                first = inorder[0]
                at = first.deadline if offset is None else first.end + offset
                if not heap or at < heap[0][0] or at == heap[0][0] and first.order < heap[0][1]:
                    if now is not None and at > now:
                        return out
                    out.append(inorder.popleft())
                    continue
            if heap and (now is None or heap[0][0] <= now):
                out.append(heapq.heappop(heap)[2])
            else:
                return out

    def clear(self) -> None:
        self.inorder.clear()
        self.heap.clear()
