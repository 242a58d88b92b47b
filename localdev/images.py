"""``faaspipe build``: the images the manifests name, from ``manifests/images/<env>.Containerfile``.

Whichever builder is here, in this order: buildah, podman, docker (a docker client whose
daemon does not answer does not count). Each image is built with the repository root as the
context and tagged ``<registry>/<env>:<tag>``, the name ``ClusterSettings.image`` renders, and
pushed with ``--push``. The Containerfiles are rendered (``faaspipe render``); a stale one is
refused rather than built, so an image never differs from what the topology says.

buildah and podman build with chroot isolation (no OCI runtime, no user namespaces: what a
container sandbox allows; ``BUILDAH_ISOLATION`` overrides it) and honour ``STORAGE_DRIVER``
(``vfs`` where overlay mounts are refused).

Where no registry image can be pulled, ``--base-from-mmdebstrap`` makes the base from Debian's
packages: mmdebstrap (bookworm minbase, as the slim images are, without docs; python3 3.11 +
python3-venv + ca-certificates + libstdc++6) into a tarball, imported as
``localhost/faaspipe-base:bookworm``. libstdc++ is named because the manylinux wheels in the lock
(numpy, xgboost, grpcio) link it and expect it of the system, as python:3.11-slim has it.

The build host's CA bundle (``SSL_CERT_FILE``, else Debian's) is passed as the build secret the
Containerfiles mount for their downloads: behind a TLS-intercepting proxy the base image's CAs
are not enough, and a secret never lands in a layer.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from localdev.render.dump import HEADER
from localdev.render.images import CA_SECRET, IMAGES_DIR, image_files, image_specs
from localdev.render.settings import ClusterSettings
from shared.topology import REPO_ROOT, load_topology

BUILDERS = ("buildah", "podman", "docker")
MMDEBSTRAP_BASE = "localhost/faaspipe-base:bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "libstdc++6")
# No fsync per file (the rootfs becomes a tarball: nothing to protect, and on a busy disk dpkg's
# syncs took minutes); no docs, manuals or translations in the base (the copyright files stay).
SLIM_DPKG = (
    "force-unsafe-io",
    *(f"path-exclude=/usr/share/{d}/*" for d in ("doc", "man", "info", "locale")),
    "path-include=/usr/share/doc/*/copyright",
)
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MANIFESTS = REPO_ROOT / "manifests"


class BuildError(RuntimeError):
    """A build that cannot start or failed; the message says which and why."""


@dataclass(frozen=True)
class Builder:
    name: str  # buildah | podman | docker
    path: str

    def _cmd(self, *args: str) -> list[str]:
        return [self.path, *args]

    def build_cmd(
        self, containerfile: Path, ignorefile: Path, tag: str, base: str | None, context: Path
    ) -> list[str]:
        args = ["-f", str(containerfile), "-t", tag]
        args += ["--build-arg", f"BASE_IMAGE={base}"] if base else []
        bundle = ca_bundle()
        args += ["--secret", f"id={CA_SECRET},src={bundle}"] if bundle else []
        if self.name == "docker":  # BuildKit reads <Containerfile>.dockerignore beside it
            return self._cmd("build", *args, str(context))
        isolation = os.environ.get("BUILDAH_ISOLATION", "chroot")
        pull = "--pull=false" if self.name == "buildah" else "--pull=missing"  # both: only if absent
        sub = "bud" if self.name == "buildah" else "build"
        return self._cmd(
            sub,
            "--isolation",
            isolation,
            "--layers",
            pull,
            "--ignorefile",
            str(ignorefile),
            *args,
            str(context),
        )

    def push_cmd(self, tag: str) -> list[str]:
        return self._cmd("push", tag)

    def exists_cmd(self, image: str) -> list[str]:
        return self._cmd("image", "inspect", image) if self.name == "docker" else self._cmd("inspect", image)


def ca_bundle() -> Path | None:
    """The CA bundle this machine trusts (what its own downloads use)."""
    for candidate in (os.environ.get("SSL_CERT_FILE"), "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def find_builder(preferred: str | None = None) -> Builder:
    """buildah, podman or docker, the first one present (docker only with a daemon answering)."""
    for name in (preferred,) if preferred else BUILDERS:
        path = shutil.which(name)
        if not path:
            continue
        if name == "docker":
            probe = subprocess.run(
                [path, "info"], capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False
            )
            if probe.returncode != 0:
                continue
        return Builder(name, path)
    wanted = preferred or ", ".join(BUILDERS)
    raise BuildError(
        f"no image builder here (looked for {wanted}; a docker client needs its daemon): "
        "install buildah (`make image-tools` as root on Debian) or podman"
    )


def _run(cmd: list[str], what: str) -> float:
    """Run ``cmd`` with its output on ours; the seconds it took."""
    print("+ " + " ".join(cmd), flush=True)
    start = time.monotonic()
    result = subprocess.run(cmd, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, check=False)
    if result.returncode != 0:
        raise BuildError(f"{what} failed (exit {result.returncode})")
    return time.monotonic() - start


def base_from_mmdebstrap(builder: Builder, image: str = MMDEBSTRAP_BASE, suite: str = "bookworm") -> float:
    """Make the base image from Debian's packages and import it as ``image``; the seconds it took.

    For machines that reach Debian's mirrors but no container registry. Debian bookworm's
    python3 is 3.11, what pyproject's ``requires-python`` asks."""
    mmdebstrap = shutil.which("mmdebstrap")
    if not mmdebstrap:
        raise BuildError("mmdebstrap is not installed (`make image-tools` as root on Debian)")
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="faaspipe-base-") as tmp:
        tarball = Path(tmp) / "rootfs.tar"
        cmd = [mmdebstrap, "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}"]
        cmd += [f"--dpkgopt={opt}" for opt in SLIM_DPKG]
        cmd += [suite, str(tarball)]
        _run(cmd, "mmdebstrap")
        if builder.name == "buildah":
            container = subprocess.run(
                [builder.path, "from", "scratch"], capture_output=True, text=True, check=True
            ).stdout.strip()
            try:
                _run([builder.path, "add", "--quiet", container, str(tarball), "/"], "buildah add")
                _run(
                    [builder.path, "config", "--env", f"PATH={BASE_PATH}", "--cmd", "python3", container],
                    "buildah config",
                )
                _run([builder.path, "commit", "--quiet", container, image], "buildah commit")
            finally:
                subprocess.run([builder.path, "rm", container], capture_output=True, check=False)
        else:  # podman import / docker import
            _run(
                [builder.path, "import", "--change", f"ENV PATH={BASE_PATH}", str(tarball), image],
                f"{builder.name} import",
            )
    return time.monotonic() - start


def image_exists(builder: Builder, image: str) -> bool:
    cmd = builder.exists_cmd(image)
    return subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL, check=False).returncode == 0


def fresh_containerfiles(envs: list[str]) -> dict[str, tuple[Path, Path]]:
    """env → (Containerfile, ignore file), refusing missing or stale ones."""
    files = image_files(load_topology(), ClusterSettings(), HEADER)
    out = {}
    for env in envs:
        rel = f"{IMAGES_DIR}/{env}.Containerfile"
        if rel not in files:
            known = sorted(f.split("/")[-1].split(".")[0] for f in files if f.endswith(".Containerfile"))
            raise BuildError(f"no image environment {env!r} (the topology's: {', '.join(known)})")
        pair = (MANIFESTS / rel, MANIFESTS / f"{rel}.dockerignore")
        for path in pair:
            rel_path = path.relative_to(MANIFESTS).as_posix()
            if not path.is_file() or path.read_text(encoding="utf-8") != files[rel_path]:
                raise BuildError(f"{path} is missing or stale: run `faaspipe render`")
        out[env] = pair
    return out


def build_images(
    envs: list[str] | None = None,
    *,
    registry: str = ClusterSettings.registry,
    tag: str = ClusterSettings.base_tag,
    base: str | None = None,
    push: bool = False,
    builder: Builder | None = None,
) -> dict[str, float]:
    """Build (and push) each environment's image; image name → seconds its build took."""
    builder = builder or find_builder()
    envs = envs or [s.environment for s in image_specs(load_topology())]
    settings = ClusterSettings(registry=registry, base_tag=tag)
    timings = {}
    for env, (containerfile, ignorefile) in fresh_containerfiles(envs).items():
        image = settings.image(env)
        cmd = builder.build_cmd(containerfile, ignorefile, image, base, REPO_ROOT)
        timings[image] = _run(cmd, f"building {image}")
        if push:
            _run(builder.push_cmd(image), f"pushing {image}")
    return timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="faaspipe build",
        description="Build the images the manifests name (manifests/images/<env>.Containerfile).",
    )
    parser.add_argument(
        "--env", action="append", dest="envs", help="an image environment (repeat; default all)"
    )
    parser.add_argument("--push", metavar="REGISTRY", help="tag <REGISTRY>/<env>:<tag> and push there")
    parser.add_argument(
        "--registry",
        default=ClusterSettings.registry,
        help="tag prefix when not pushing (default %(default)s)",
    )
    parser.add_argument("--tag", default=ClusterSettings.base_tag, help="image tag (default %(default)s)")
    parser.add_argument("--base", help="base image (default: the Containerfile's python:3.11-slim-bookworm)")
    parser.add_argument(
        "--base-from-mmdebstrap",
        action="store_true",
        help=f"make the base with mmdebstrap (Debian bookworm + python3) as {MMDEBSTRAP_BASE} "
        "if it is not there yet, and build on it (for machines that cannot pull from a registry)",
    )
    parser.add_argument("--builder", choices=BUILDERS, help="default: the first of buildah, podman, docker")
    args = parser.parse_args(argv)
    try:
        builder = find_builder(args.builder)
        base = args.base
        if args.base_from_mmdebstrap:
            base = base or MMDEBSTRAP_BASE
            if not image_exists(builder, base):
                print(f"base {base} made in {base_from_mmdebstrap(builder, base):.1f} s")
        timings = build_images(
            args.envs,
            registry=args.push or args.registry,
            tag=args.tag,
            base=base,
            push=bool(args.push),
            builder=builder,
        )
    except BuildError as exc:
        print(f"faaspipe build: {exc}", file=sys.stderr)
        return 1
    for image, seconds in timings.items():
        print(f"built {image} in {seconds:.1f} s{' and pushed it' if args.push else ''}")
    return 0
