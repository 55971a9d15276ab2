"""The committed BPF objects match their sources (bpfobj/bpf/MANIFEST.sha256).

The first test checks the repository itself; the others exercise the check on
a scratch tree so its verdicts (stale / out of date / ok) stay trustworthy.
"""

from __future__ import annotations

from pathlib import Path

from bpfobj import manifest


def test_committed_objects_match_sources() -> None:
    problems = manifest.check()
    assert not problems, "BPF objects do not match their sources:\n" + "\n".join(map(str, problems))


def _tree(tmp_path: Path) -> Path:
    inc = tmp_path / "bpfobj" / "bpf" / "include"
    inc.mkdir(parents=True)
    (tmp_path / "tests" / "bpf").mkdir(parents=True)
    (inc / "common.h").write_text("#define X 1\n")
    (inc / "other.h").write_text('#include "common.h"\n')
    (inc / "unused.h").write_text("/* nobody includes me */\n")
    (tmp_path / "bpfobj" / "bpf" / "prog.bpf.c").write_text('#include "other.h"\nint x;\n')
    (tmp_path / "bpfobj" / "bpf" / "prog.bpf.o").write_bytes(b"obj-v1")
    (tmp_path / "tests" / "bpf" / "t.bpf.c").write_text("int y;\n")
    (tmp_path / "tests" / "bpf" / "t.bpf.o").write_bytes(b"tobj-v1")
    manifest.write(tmp_path)
    return tmp_path


def test_fresh_tree_is_clean(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    assert manifest.check(root) == []
    text = (root / manifest.MANIFEST_REL).read_text()
    assert "bpfobj/bpf/prog.bpf.o" in text and "tests/bpf/t.bpf.c" in text


def test_transitive_header_change_makes_object_stale(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    (root / "bpfobj/bpf/include/common.h").write_text("#define X 2\n")
    problems = manifest.check(root)
    stale = [p for p in problems if p.kind == "stale"]
    assert [p.path for p in stale] == ["bpfobj/bpf/prog.bpf.o"]
    assert "common.h" in stale[0].detail
    # the test object does not include common.h: not stale
    assert all(p.path != "tests/bpf/t.bpf.o" for p in problems)


def test_source_change_makes_its_object_stale(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    (root / "tests/bpf/t.bpf.c").write_text("int y = 2;\n")
    problems = manifest.check(root)
    assert [(p.kind, p.path) for p in problems] == [("stale", "tests/bpf/t.bpf.o")]


def test_rebuilt_object_without_manifest_rewrite(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    (root / "bpfobj/bpf/prog.bpf.c").write_text('#include "other.h"\nint x = 3;\n')
    (root / "bpfobj/bpf/prog.bpf.o").write_bytes(b"obj-v2")
    problems = manifest.check(root)
    assert [(p.kind, p.path) for p in problems] == [("manifest-out-of-date", "bpfobj/bpf/prog.bpf.o")]
    manifest.write(root)
    assert manifest.check(root) == []


def test_missing_object_and_new_source(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    (root / "tests/bpf/new.bpf.c").write_text("int z;\n")
    kinds = {(p.kind, p.path) for p in manifest.check(root)}
    assert ("missing-object", "tests/bpf/new.bpf.o") in kinds


def test_unincluded_header_change_is_reported(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    (root / "bpfobj/bpf/include/unused.h").write_text("/* changed */\n")
    problems = manifest.check(root)
    assert [(p.kind, p.path) for p in problems] == [("manifest-out-of-date", "bpfobj/bpf/include/unused.h")]


def test_cli_check_exit_codes(tmp_path: Path, monkeypatch, capsys) -> None:
    root = _tree(tmp_path)
    monkeypatch.setattr(manifest, "REPO", root)
    assert manifest.main(["check"]) == 0
    (root / "bpfobj/bpf/include/common.h").write_text("#define X 9\n")
    assert manifest.main(["check"]) == 1
    err = capsys.readouterr().err
    assert "stale: bpfobj/bpf/prog.bpf.o" in err
    assert manifest.main(["bogus"]) == 2


def test_a_source_reading_registers_gives_one_object_per_architecture(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    (root / "bpfobj/bpf/include/bpf_regs.h").write_text("/* registers */\n")
    (root / "bpfobj/bpf/include/other.h").write_text('#include "common.h"\n#include "bpf_regs.h"\n')
    assert manifest.objects_of(root, "bpfobj/bpf/prog.bpf.c") == [
        f"bpfobj/bpf/prog.{arch}.bpf.o" for arch in manifest.ARCHES]
    assert manifest.objects_of(root, "tests/bpf/t.bpf.c") == ["tests/bpf/t.bpf.o"]
    kinds = {(p.kind, p.path) for p in manifest.check(root)}
    assert {("missing-object", f"bpfobj/bpf/prog.{arch}.bpf.o") for arch in manifest.ARCHES} <= kinds
    for arch in manifest.ARCHES:
        (root / f"bpfobj/bpf/prog.{arch}.bpf.o").write_bytes(arch.encode())
    manifest.write(root)
    assert manifest.check(root) == []
    (root / "bpfobj/bpf/include/bpf_regs.h").write_text("/* changed */\n")
    stale = sorted(p.path for p in manifest.check(root) if p.kind == "stale")
    assert stale == sorted(f"bpfobj/bpf/prog.{arch}.bpf.o" for arch in manifest.ARCHES)
