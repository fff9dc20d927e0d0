"""GoBGP's gRPC API for Python: generated at set-up from the .proto files Debian ships.

GoBGP publishes its API as .proto files only; Debian's
``golang-github-osrg-gobgp-dev`` installs the ones matching its ``gobgpd``
under ``/usr/share/gocode/src/github.com/osrg/gobgp/api``. ``scripts/setup.sh``
and ``scripts/install.sh`` run ``python -m agent.upstream.stubs`` after
installing the ``upstream`` extra (grpcio, grpcio-tools, protobuf): it compiles
them with grpcio-tools into the package ``floodguard_gobgpapi`` in the venv's
site-packages, so the stubs always match both the speaker installed and the
protobuf runtime of the venv. Nothing generated is committed.

protoc writes ``import gobgp_pb2`` (a top-level import) into the modules of
files that import each other; they are rewritten as relative imports so that
the generated modules live in their own package and never shadow anything.
"""

from __future__ import annotations

import argparse
import importlib
import re
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path
from types import ModuleType

PROTO_DIR = Path("/usr/share/gocode/src/github.com/osrg/gobgp/api")
PROTOS = ("gobgp.proto", "attribute.proto", "capability.proto")
PACKAGE = "floodguard_gobgpapi"
_LOCAL_IMPORT = re.compile(r"^import (\w+_pb2) as (\w+)$", re.M)


class StubsMissingError(ImportError):
    """The generated GoBGP stubs are not importable; the message says how to make them."""


def default_destination() -> Path:
    """The venv's site-packages (purelib) of the running interpreter."""
    return Path(sysconfig.get_paths()["purelib"])


def up_to_date(dest: Path, proto_dir: Path = PROTO_DIR) -> bool:
    """Generated from these .proto files, and not older than any of them."""
    stamp = dest / PACKAGE / "__init__.py"
    if not stamp.exists():
        return False
    made = stamp.stat().st_mtime
    return all((proto_dir / p).stat().st_mtime <= made for p in PROTOS if (proto_dir / p).exists())


def generate(dest: Path, proto_dir: Path = PROTO_DIR) -> Path:
    """Compile the protos into ``dest/floodguard_gobgpapi``; returns the package directory."""
    from grpc_tools import protoc

    missing = [p for p in PROTOS if not (proto_dir / p).exists()]
    if missing:
        raise FileNotFoundError(
            f"GoBGP's API definitions {', '.join(missing)} are not in {proto_dir}: "
            "apt-get install golang-github-osrg-gobgp-dev"
        )
    # google/protobuf/*.proto (any, empty, timestamp) come with grpcio-tools.
    include = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / PACKAGE
        out.mkdir()
        argv = ["protoc", f"-I{proto_dir}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}",
                *PROTOS]
        if protoc.main(argv) != 0:
            raise RuntimeError(f"protoc failed on {proto_dir}: run `{' '.join(argv)}` to see why")
        for module in out.glob("*.py"):
            text = module.read_text()
            module.write_text(_LOCAL_IMPORT.sub(r"from . import \1 as \2", text))
        (out / "__init__.py").write_text(
            f'"""GoBGP API stubs generated from {proto_dir} by agent.upstream.stubs; do not edit."""\n'
        )
        target = dest / PACKAGE
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(out, target)
    importlib.invalidate_caches()
    return target


def load() -> tuple[ModuleType, ModuleType, ModuleType]:
    """(gobgp_pb2, attribute_pb2, gobgp_pb2_grpc), or StubsMissingError saying what to run."""
    try:
        gobgp = importlib.import_module(f"{PACKAGE}.gobgp_pb2")
        attribute = importlib.import_module(f"{PACKAGE}.attribute_pb2")
        grpc_mod = importlib.import_module(f"{PACKAGE}.gobgp_pb2_grpc")
    except ImportError as e:
        raise StubsMissingError(
            f"the GoBGP API stubs are not installed ({e}): run `make setup` (a checkout) or `make install` "
            f"(a gateway), or `{sys.executable} -m agent.upstream.stubs`"
        ) from e
    return gobgp, attribute, grpc_mod


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.upstream.stubs", description=__doc__.split("\n")[0])
    parser.add_argument("--dest", type=Path, default=None, help="site-packages to write into (default: this venv's)")
    parser.add_argument("--protos", type=Path, default=PROTO_DIR, help="directory of GoBGP's .proto files")
    parser.add_argument("--force", action="store_true", help="generate even when up to date")
    args = parser.parse_args(argv)
    dest = args.dest or default_destination()
    if not args.force and up_to_date(dest, args.protos):
        return 0
    try:
        where = generate(dest, args.protos)
    except (FileNotFoundError, RuntimeError, ImportError) as e:
        print(f"floodguard: {e}", file=sys.stderr)
        return 1
    print(f"floodguard: generated the GoBGP API stubs in {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
