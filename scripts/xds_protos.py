#!/usr/bin/env python3
"""Build meshlib's xDS message descriptors from the vendored .proto files.

    python scripts/xds_protos.py           # rewrite src/meshlib/_xds/descriptors.bin
    python scripts/xds_protos.py --check   # exit 1 if descriptors.bin is stale
    python scripts/xds_protos.py --vendor ENVOY_API CNCF_XDS PGV GOOGLEAPIS
                                           # re-copy the .proto files from upstream checkouts

The .proto files under ``src/meshlib/_xds/protos/`` are upstream's, unchanged: the
import closure of :data:`ROOTS` (about 70 of data-plane-api's ~650 files, plus what
they import from cncf/xds, protoc-gen-validate and googleapis; the NOTICE there
names the commits). They are trimmed by file, never inside a file: a field cut
out of a message would come back as an unknown field, re-encoded after the known
ones (so not byte-identical), and the validator could not see it.

grpcio-tools' protoc compiles them into one ``FileDescriptorSet`` without source
info; protobuf's own well-known types (``google/protobuf/*.proto``) are left
out, because meshlib adds the installed protobuf's copies to its private pool at
run time (:mod:`meshlib._xds.messages`). The output depends only on the .proto
files and protoc's version (pinned in pyproject's ``dev`` extra).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "src" / "meshlib" / "_xds" / "protos"
OUTPUT = ROOT / "src" / "meshlib" / "_xds" / "descriptors.bin"

#: the files meshlib needs; everything else vendored is what these import
ROOTS = (
    "envoy/service/discovery/v3/ads.proto",
    "envoy/config/listener/v3/listener.proto",
    "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto",
    "envoy/extensions/filters/http/router/v3/router.proto",
    "envoy/config/route/v3/route.proto",
    "envoy/config/cluster/v3/cluster.proto",
    "envoy/config/endpoint/v3/endpoint.proto",
)

_IMPORT = re.compile(r'^import\s+(?:public\s+|weak\s+)?"([^"]+)"\s*;', re.MULTILINE)


def vendored() -> list[str]:
    """Every vendored .proto file, relative to :data:`PROTOS`, sorted."""
    return sorted(p.relative_to(PROTOS).as_posix() for p in PROTOS.rglob("*.proto"))


def compile_set(out: Path) -> bytes:
    """The serialized FileDescriptorSet of the vendored files (well-known types left out)."""
    from google.protobuf import descriptor_pb2
    from grpc_tools import protoc

    include = Path(protoc.__file__).resolve().parent / "_proto"
    args = ["protoc", f"-I{PROTOS}", f"-I{include}", "--include_imports",
            f"--descriptor_set_out={out}", *vendored()]
    if protoc.main(args) != 0:
        raise SystemExit(f"xds_protos: protoc failed: {' '.join(args)}")
    full = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    kept = descriptor_pb2.FileDescriptorSet()
    names = set()
    for file in full.file:
        if file.name.startswith("google/protobuf/"):
            continue
        names.add(file.name)
        kept.file.append(file)
    missing = sorted(set(vendored()) - names)
    if missing:
        raise SystemExit(f"xds_protos: protoc left out {missing}")
    return kept.SerializeToString(deterministic=True)


def vendor(sources: list[Path]) -> None:
    """Copy the import closure of :data:`ROOTS` from upstream checkouts into :data:`PROTOS`."""
    found: dict[str, Path] = {}
    todo = list(ROOTS)
    while todo:
        name = todo.pop()
        if name in found or name.startswith("google/protobuf/"):
            continue
        for source in sources:
            if (source / name).is_file():
                found[name] = source / name
                break
        else:
            raise SystemExit(f"xds_protos: {name} is in none of {[str(s) for s in sources]}")
        todo.extend(_IMPORT.findall(found[name].read_text()))
    for old in PROTOS.rglob("*.proto"):
        old.unlink()
    for name, path in sorted(found.items()):
        target = PROTOS / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    print(f"xds_protos: vendored {len(found)} files into {PROTOS.relative_to(ROOT)}")


def main(argv: list[str]) -> int:
    if argv[:1] == ["--vendor"]:
        vendor([Path(p) for p in argv[1:]])
        argv = []
    check = argv == ["--check"]
    if argv and not check:
        print(__doc__, file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        data = compile_set(Path(tmp) / "set.bin")
    if check:
        if not OUTPUT.is_file() or OUTPUT.read_bytes() != data:
            print(f"xds_protos: {OUTPUT.relative_to(ROOT)} is stale; run "
                  "python scripts/xds_protos.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_bytes(data)
    print(f"xds_protos: wrote {OUTPUT.relative_to(ROOT)} ({len(data):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
