"""Two network namespaces joined by a veth pair, for tests that need hosts or a link of their own."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any

from pyroute2 import IPRoute, NetNS, netns


@contextmanager
def joined_namespaces(prefix: str, addresses: tuple[str, str], *, qdisc: dict[str, Any] | None = None):
    """Namespaces ``<prefix>-<pid>-a`` and ``-b``, the veth ends in them holding ``addresses``
    (/24); with ``qdisc`` (pyroute2 tc arguments: kind first) as the root qdisc of both ends.
    Yields the two names; removed (with the pair) on exit."""
    tag = f"{os.getpid() % 1_000_000}"
    names = (f"{prefix}-{tag}-a", f"{prefix}-{tag}-b")
    ends = (f"{prefix[:4]}{tag}a", f"{prefix[:4]}{tag}b")  # interface names hold 15 bytes
    created = []
    try:
        for name in names:
            netns.create(name)
            created.append(name)
        with IPRoute() as ipr:
            ipr.link("add", ifname=ends[0], kind="veth", peer=ends[1])
            for end, name in zip(ends, names):
                ipr.link("set", index=ipr.link_lookup(ifname=end)[0], net_ns_fd=name)
        for name, end, address in zip(names, ends, addresses):
            with NetNS(name) as ns:
                for ifname in (end, "lo"):
                    index = ns.link_lookup(ifname=ifname)[0]
                    if ifname == end:
                        ns.addr("add", index=index, address=address, prefixlen=24)
                        if qdisc is not None:
                            ns.tc("add", index=index, handle="1:", **qdisc)
                    ns.link("set", index=index, state="up")
        yield names
    finally:
        for name in created:
            netns.remove(name)
