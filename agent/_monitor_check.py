"""The monitor part of ``sidetrace check``: which metrics groups can run here.

The monitor object is loaded and each program attached for real, as ``run``
does, then everything is removed again.  Nothing is measured meanwhile: the
object gets a process set of its own, which is empty.  A group runs when at
least one of its programs does; a program that does not is listed with what
it would have given and why.
"""

from __future__ import annotations

from collections.abc import Callable

import bpfobj

from ._monitor import GROUP_NAMES, GROUPS, PROGRAM_ROLES, Monitor


def _programs(group: str) -> set[str]:
    return {name for entry in GROUPS[group] for name in (entry if isinstance(entry, tuple) else (entry,))}


def monitor_report(say: Callable[[str], None], obj: bpfobj.ObjectSpec | None = None) -> list[str]:
    """Print the monitor section; returns notes on what only limits the metrics (never fatal).

    ``obj``: the monitor object's spec, if not the shipped object's."""
    say("")
    say("monitor (metrics groups; programs loaded, attached and removed):")
    try:
        with Monitor(GROUP_NAMES, obj=obj) as monitor:
            monitor.attach(log_off=False)
            running, off = monitor.running, monitor.off()
    except (bpfobj.BpfError, OSError) as exc:
        say(f"  not loaded: {exc}")
        return [f"the monitor cannot load ({exc}): the agent runs without metrics"]
    notes: list[str] = []
    for group in GROUP_NAMES:
        missing = sorted(_programs(group) & off.keys())
        if group not in running:
            state = "no"
            notes.append(f"metrics group {group} cannot run here")
        elif missing:
            state = "yes, in part"
            notes.append(f"metrics group {group} runs without: "
                         + "; ".join(PROGRAM_ROLES.get(name, name) for name in missing))
        else:
            state = "yes"
        say(f"  {group:<40} {state}")
    for name, why in off.items():
        say(f"  {name}: {PROGRAM_ROLES.get(name, name)}: {why}")
    return notes
