"""The generated gRPC code in node/api/v1 is exactly what `make proto` makes from proto/.

If this fails after a proto change, run `make proto` and commit the result.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("grpc_tools", reason="grpcio-tools (a dev dependency) regenerates the code")

from node.api import codegen

COMMITTED = codegen.OUTPUT_DIR


def generated_files(directory: Path) -> dict[str, bytes]:
    """name -> bytes of the files a code generation run owns (no caches)."""
    return {
        p.name: p.read_bytes()
        for p in sorted(directory.iterdir())
        if p.is_file() and p.suffix in (".py", ".pyi")
    }


def drift(expected: dict[str, bytes], actual: dict[str, bytes]) -> list[str]:
    problems = [f"missing: {n}" for n in sorted(expected.keys() - actual.keys())]
    problems += [f"extra: {n}" for n in sorted(actual.keys() - expected.keys())]
    problems += [f"differs: {n}" for n in sorted(expected.keys() & actual.keys()) if expected[n] != actual[n]]
    return problems


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("generated")
    written = codegen.generate(out)
    assert sorted(p.name for p in written) == sorted(generated_files(out))
    return generated_files(out)


def test_generated_code_matches_the_committed_code(regenerated):
    committed = generated_files(COMMITTED)
    assert committed, f"no generated code in {COMMITTED}"
    problems = drift(regenerated, committed)
    assert not problems, "node/api/v1 drifted from proto/ (run `make proto`): " + "; ".join(problems)


def test_every_proto_file_has_its_generated_modules(regenerated):
    protos = codegen.proto_files()
    assert protos, "no .proto files found"
    for proto in protos:
        stem = proto.stem
        for name in (f"{stem}_pb2.py", f"{stem}_pb2.pyi", f"{stem}_pb2_grpc.py"):
            assert name in regenerated, name
    # The import lines point at our package, never at the proto path.
    for name, code in regenerated.items():
        assert b"from smartregion.v1 import" not in code, name
        assert b"import smartregion" not in code, name


def test_a_proto_change_is_detected(tmp_path, regenerated):
    proto_root = tmp_path / "proto"
    shutil.copytree(codegen.PROTO_ROOT, proto_root)
    ingest = proto_root / codegen.PROTO_PACKAGE_DIR / "ingest.proto"
    ingest.write_text(ingest.read_text() + "\nmessage DriftProbe {\n  string note = 1;\n}\n")

    out = tmp_path / "out"
    codegen.generate(out, proto_root=proto_root)
    changed = generated_files(out)

    problems = drift(changed, regenerated)
    assert "differs: ingest_pb2.py" in problems
    assert "differs: ingest_pb2.pyi" in problems
    assert not any("admin" in p for p in problems), problems
    assert b"DriftProbe" in changed["ingest_pb2.py"]


def test_a_hand_edit_or_a_missing_file_is_detected(tmp_path, regenerated):
    edited = dict(regenerated)
    edited["admin_pb2_grpc.py"] = edited["admin_pb2_grpc.py"] + b"\n# hand edit\n"
    assert drift(regenerated, edited) == ["differs: admin_pb2_grpc.py"]
    missing = {k: v for k, v in regenerated.items() if k != "ingest_pb2.pyi"}
    assert drift(regenerated, missing) == ["missing: ingest_pb2.pyi"]
    assert drift(regenerated, {**regenerated, "stale_pb2.py": b""}) == ["extra: stale_pb2.py"]


def test_an_unchanged_copy_of_proto_generates_the_same_code(tmp_path, regenerated):
    proto_root = tmp_path / "proto"
    shutil.copytree(codegen.PROTO_ROOT, proto_root)
    out = tmp_path / "out"
    codegen.generate(out, proto_root=proto_root)
    assert drift(regenerated, generated_files(out)) == []
