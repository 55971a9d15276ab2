"""Session-wide test policy.

* Tests marked ``kernel`` need root and a BPF-capable kernel.  Elsewhere they
  skip with the reason; in CI (``CI=true``) a skipped kernel test fails the run.
* No file descriptor may leak: the session compares the open fds at start and end.
"""

from __future__ import annotations

import os

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _kernel_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "kernel tests need root (they load BPF programs, make network namespaces, drop privileges with setpriv)"
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        return "kernel tests need kernel BTF at /sys/kernel/btf/vmlinux"
    return None


def _open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config._sidetrace_fds = _open_fds()  # type: ignore[attr-defined]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _kernel_unavailable_reason()
    if reason is None:
        return
    for item in items:
        if "kernel" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> None:
    # CI must run every kernel test: turn a kernel-test skip into a failure
    # while the report is made, before any reporter has seen it as a skip.
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and "kernel" in item.keywords:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"kernel test skipped in CI: {reason}"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    before = getattr(session.config, "_sidetrace_fds", None)
    if before is None:
        return
    leaked = _open_fds() - before
    # The listdir fd itself is closed by now; anything else left open is a leak.
    leaked = {fd for fd in leaked if os.path.exists(f"/proc/self/fd/{fd}")}
    if leaked:
        targets = []
        for fd in sorted(leaked):
            try:
                targets.append(f"{fd}->{os.readlink(f'/proc/self/fd/{fd}')}")
            except OSError:
                targets.append(str(fd))
        print(f"\nFD LEAK: {len(leaked)} file descriptors left open: {', '.join(targets)}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
