"""The monitor's groups as `--metrics` names them (no BPF needed to check an option)."""

from __future__ import annotations

GROUP_NAMES = ("cpu", "memory", "disk", "net")


class MetricsOptionError(ValueError):
    """A --metrics list names something that is not a group."""


def parse_groups(spec: str | None, *, disabled: bool = False) -> frozenset[str]:
    """The groups to run: ``--no-metrics`` -> none; ``all`` -> every one; ``cpu,net`` -> those."""
    if disabled:
        return frozenset()
    if spec is None or spec.strip() in ("", "all"):
        return frozenset(GROUP_NAMES)
    names = {part.strip() for part in spec.split(",") if part.strip()}
    unknown = sorted(names - set(GROUP_NAMES))
    if unknown:
        raise MetricsOptionError(f"unknown metrics group '{unknown[0]}' (groups: {', '.join(GROUP_NAMES)}, all)")
    return frozenset(names)
