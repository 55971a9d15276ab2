"""Build dist/sidetrace.pyz: sidetrace and its pure-Python dependencies in one zipapp.

Run by ``make dist``.  The project's packages are copied from the source
tree (with their data: BPF objects, the wire schema); the dependencies are
installed from pure-Python wheels only (py3-none-any), so every library
inside runs pure-Python code: cbor2 5.x (its last pure-Python series; see
wire/_framing.py for what its decoder cannot check), protobuf's Python
implementation.  grpcio has no pure-Python form and is left
out: inside the zipapp ``export otlp`` speaks OTLP/HTTP, and gRPC when the
host's Python has grpcio.  The result needs nothing but python3 >= 3.11.

Usage: python dist/build_pyz.py [OUTPUT]   (default: dist/sidetrace.pyz)
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipapp
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Distributions without a pure-Python form.
NOT_PURE = {"grpcio"}
# Extras whose pure-Python parts go in.
EXTRAS = ("otlp", "prometheus")
MAIN = '''\
"""sidetrace as one file: python3 sidetrace.pyz COMMAND ..."""
import atexit
import os
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

# The protobuf inside is the pure-Python one; say so instead of letting it probe.
os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")


def tracer_objects_on_disk():
    """The agent picks its tracer object among files (one per architecture):
    copy them out of the zip for the life of this process."""
    import bpfobj
    import agent._app
    import agent._monitor

    target = Path(tempfile.mkdtemp(prefix="sidetrace-bpf-"))
    atexit.register(shutil.rmtree, target, True)
    for entry in resources.files(bpfobj).joinpath("bpf").iterdir():
        if entry.name.endswith(".bpf.o"):
            (target / entry.name).write_bytes(entry.read_bytes())
    agent._app.TRACER_OBJECT = target / agent._app.TRACER_OBJECT.name
    agent._monitor.MONITOR_OBJECT = target / agent._monitor.MONITOR_OBJECT.name


if {"run", "check"} & set(sys.argv[1:]):  # check loads the monitor object too
    tracer_objects_on_disk()

from agent.cli import main

sys.exit(main())
'''
_NAME = re.compile(r"^[A-Za-z0-9._-]+")


def requirements(project: dict) -> list[str]:
    reqs = list(project["dependencies"])
    for extra in EXTRAS:
        reqs += project["optional-dependencies"][extra]
    return [r for r in reqs if _NAME.match(r).group(0).lower() not in NOT_PURE]


def copy_packages(pyproject: dict, stage: Path) -> None:
    tool = pyproject["tool"]["setuptools"]
    data = tool.get("package-data", {})
    for package in tool["packages"]:
        source = REPO / package.replace(".", "/")
        target = stage / package.replace(".", "/")
        target.mkdir(parents=True, exist_ok=True)
        for path in source.glob("*.py"):
            shutil.copy2(path, target / path.name)
        for pattern in data.get(package, ()):
            for path in source.glob(pattern):
                (target / path.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target / path.relative_to(source))


def write_metadata(project: dict, stage: Path) -> None:
    """A dist-info, so importlib.metadata knows sidetrace's version inside the zip."""
    info = stage / f"sidetrace-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: sidetrace\nVersion: {project['version']}\n")


def install_dependencies(reqs: list[str], stage: Path) -> None:
    """Install ``reqs`` into ``stage`` from pure-Python wheels only (py3-none-any).

    pip then picks, for each library, the newest release that has such a
    wheel: cbor2 5.x (6.x is compiled only), protobuf's pure wheel.
    """
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "--target", str(stage), "--no-compile", "--only-binary=:all:", "--platform", "any",
                    "--implementation", "py", "--python-version", "3.11", "--abi", "none", *reqs], check=True)
    shutil.rmtree(stage / "bin", ignore_errors=True)
    binaries = [p for p in stage.rglob("*") if p.suffix in (".so", ".pyd") or ".so." in p.name]
    if binaries:
        raise SystemExit(f"not pure Python: {', '.join(map(str, binaries))}")


def build(output: Path) -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    project = pyproject["project"]
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp) / "sidetrace"
        stage.mkdir()
        install_dependencies(requirements(project), stage)
        copy_packages(pyproject, stage)
        write_metadata(project, stage)
        (stage / "__main__.py").write_text(MAIN)
        for cache in list(stage.rglob("__pycache__")):
            shutil.rmtree(cache)
        output.parent.mkdir(parents=True, exist_ok=True)
        zipapp.create_archive(stage, output, interpreter="/usr/bin/env python3", compressed=True)
    print(f"{output}: {output.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    build(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "dist" / "sidetrace.pyz")
