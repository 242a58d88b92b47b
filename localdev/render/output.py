"""Every generated file (``render_files``), written (``render``) or compared (``check``), and the
``faaspipe render`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path

from localdev.render.auth import FEATURES_FILE, FEATURES_NOTE, auth_docs, features_doc
from localdev.render.dask import dask_docs
from localdev.render.dump import HEADER, dump_docs
from localdev.render.functions import function_docs
from localdev.render.images import image_files
from localdev.render.overlays import overlay_files
from localdev.render.platform import broker_docs, mlflow_docs, namespace_doc, platform_docs
from localdev.render.readme import readme
from localdev.render.services import platform_files, platform_overlay_files
from localdev.render.settings import ClusterSettings, overlays
from shared.topology import REPO_ROOT, Topology, TopologyError, load_topology

DEFAULT_OUT = REPO_ROOT / "manifests"


def render_files(topology: Topology, settings: ClusterSettings | None = None) -> dict[str, str]:
    """Relative path → content of every generated file."""
    settings = settings or ClusterSettings()
    functions = sorted(topology.functions.values(), key=lambda f: f.name)
    files = {
        "base/namespace.yaml": dump_docs([namespace_doc()]),
        "base/platform.yaml": dump_docs(platform_docs(settings)),
        "base/broker.yaml": dump_docs(broker_docs(settings, topology)),
        "base/mlflow.yaml": dump_docs(mlflow_docs(settings)),
        "base/auth.yaml": dump_docs(auth_docs(topology)),
        "base/dask.yaml": dump_docs(dask_docs(settings, topology)),
    }
    for fn in functions:
        files[f"base/functions/{fn.name}.yaml"] = dump_docs(function_docs(fn, settings))
    resources = sorted(p.removeprefix("base/") for p in files if p.startswith("base/"))
    resources.remove("namespace.yaml")
    files["base/kustomization.yaml"] = dump_docs(
        [
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": ["namespace.yaml", *resources],
            }
        ]
    )
    dev, prod = overlays()
    for overlay in (dev, prod):
        files.update(overlay_files(topology, overlay, settings))
        files.update(platform_overlay_files(overlay, settings))
    files.update(platform_files(settings))  # Kafka, MinIO, Redis, Postgres (services.py)
    files["README.md"] = readme(topology, settings, dev, prod)
    files[FEATURES_FILE] = dump_docs([features_doc()], FEATURES_NOTE)
    files.update(image_files(topology, settings, HEADER))
    return dict(sorted(files.items()))


def _generated(path: Path) -> bool:
    try:
        with path.open(encoding="utf-8") as f:
            return HEADER in f.readline()
    except (OSError, UnicodeDecodeError):
        return False


def stale_files(out_dir: Path, files: Mapping[str, str]) -> list[Path]:
    """Generated files under ``out_dir`` that a fresh render would not produce."""
    if not out_dir.is_dir():
        return []
    return sorted(
        p
        for p in out_dir.rglob("*")
        if p.is_file() and p.relative_to(out_dir).as_posix() not in files and _generated(p)
    )


def render(topology: Topology, out_dir: Path, settings: ClusterSettings | None = None) -> list[Path]:
    """Write every manifest under ``out_dir``; remove generated files no longer produced."""
    out_dir = Path(out_dir)
    files = render_files(topology, settings)
    for path in stale_files(out_dir, files):
        path.unlink()
    written = []
    for rel, content in files.items():
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text(encoding="utf-8") != content:
            path.write_text(content, encoding="utf-8")
        written.append(path)
    for directory in sorted((d for d in out_dir.rglob("*") if d.is_dir()), reverse=True):
        if not any(directory.iterdir()):
            directory.rmdir()
    return written


def check(topology: Topology, out_dir: Path, settings: ClusterSettings | None = None) -> list[str]:
    """Relative paths that differ from a fresh render (missing, changed or stale)."""
    out_dir = Path(out_dir)
    files = render_files(topology, settings)
    differ = [
        rel
        for rel, content in files.items()
        if not (out_dir / rel).is_file() or (out_dir / rel).read_text(encoding="utf-8") != content
    ]
    differ += [p.relative_to(out_dir).as_posix() for p in stale_files(out_dir, files)]
    return sorted(differ)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="faaspipe render", description="Render Kubernetes manifests from functions/*/function.yaml"
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="output directory (default: manifests/)"
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the output differs from a fresh render"
    )
    parser.add_argument("--registry", default=ClusterSettings.registry, help="image registry prefix")
    args = parser.parse_args(argv)
    settings = ClusterSettings(registry=args.registry)
    try:
        topology = load_topology()
        render_files(topology, settings)  # every refusal before anything is written
    except TopologyError as exc:
        print(f"cannot render: {exc}", file=sys.stderr)
        return 2
    if args.check:
        differ = check(topology, args.out, settings)
        for rel in differ:
            print(f"differs: {args.out / rel}")
        if differ:
            print("manifests are out of date: run `faaspipe render`", file=sys.stderr)
            return 1
        print(f"{args.out}: up to date")
        return 0
    written = render(topology, args.out, settings)
    print(f"rendered {len(written)} files under {args.out}")
    return 0
