"""One Containerfile per image environment: ``manifests/images/<env>.Containerfile``.

The manifests name ``<registry>/<env>:<tag>`` for every environment the topology's functions
use (a pyproject dependency group each) and ``platform`` for the MLflow Deployment; these are
the recipes of those images, rendered from the same topology so a new environment gets its
image without anyone writing one. ``faaspipe build`` (``localdev/images.py``) builds them with
the repository root as the build context.

Each is two stages. The builder installs uv (the Makefile's ``UV_VERSION``) and syncs the
group's locked dependencies from ``pyproject.toml`` + ``uv.lock`` into ``/app/.venv`` with the
base image's own Python (never a downloaded one: the venv must run in the final stage, which
has only the base's interpreter). The final stage copies the venv and the source directories
only: no uv, no pip cache, no compiler; it runs as a numeric non-root user, with the venv first
on ``PATH`` (so the manifests' ``python`` is the venv's) and ``PYTHONPATH=/app`` (the manifests
leave ``PYTHONPATH`` to the image: ``settings.LOCAL_ONLY_ENV``). The entrypoint is the command
the manifests run for that image, taken from the rendered objects, not restated here.

The base is an ``ARG``: Debian bookworm's Python 3.11 (``python:3.11-slim-bookworm`` by
default), or, where no registry image can be pulled, one made with mmdebstrap
(``faaspipe build --base-from-mmdebstrap``). Each Containerfile has its ignore file beside it
(``<env>.Containerfile.dockerignore``: Docker reads that name, buildah and podman get it as
``--ignorefile``), an allow-list of what the stages copy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from localdev.render.functions import function_service
from localdev.render.platform import mlflow_docs
from localdev.render.settings import ClusterSettings
from shared.topology import REPO_ROOT, Topology

PLATFORM_ENV = "platform"  # the MLflow server's image (pyproject group "platform")
DEFAULT_BASE = "docker.io/library/python:3.11-slim-bookworm"
APP_DIR = "/app"
VENV = f"{APP_DIR}/.venv"
USER_ID = 65532  # numeric, so Kubernetes' runAsNonRoot can verify it without an /etc/passwd entry
SOURCE_DIRS = ("shared", "events", "functions")  # what `python -m shared.runtime` imports
LOCK_FILES = ("pyproject.toml", "uv.lock")
IMAGES_DIR = "images"  # under manifests/
CA_SECRET = "ca-bundle"  # build secret: the build host's CA bundle (localdev/images.py passes it)
CA_TARGET = f"/run/secrets/{CA_SECRET}"
_TRUST = f"\\\n    if [ -s {CA_TARGET} ]; then export SSL_CERT_FILE={CA_TARGET} PIP_CERT={CA_TARGET}; fi;"


def uv_version() -> str:
    """The uv the Makefile bootstraps: the images resolve the lock with the same uv."""
    text = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")
    match = re.search(r"^UV_VERSION\s*:?=\s*(\S+)", text, re.MULTILINE)
    if not match:
        raise RuntimeError("Makefile has no UV_VERSION")
    return match.group(1)


@dataclass(frozen=True)
class ImageSpec:
    environment: str
    entrypoint: tuple[str, ...]  # the manifests' `command` for this image
    users: tuple[str, ...]  # what runs it: function names, or "mlflow"


def _container(doc: dict[str, Any]) -> dict[str, Any]:
    (container,) = doc["spec"]["template"]["spec"]["containers"]
    return container


def image_specs(topology: Topology, settings: ClusterSettings | None = None) -> list[ImageSpec]:
    """Every image the manifests name, with the command they run it with."""
    settings = settings or ClusterSettings()
    by_env: dict[str, list[str]] = {}
    commands: dict[str, set[tuple[str, ...]]] = {}
    for fn in sorted(topology.functions.values(), key=lambda f: f.name):
        by_env.setdefault(fn.environment, []).append(fn.name)
        command = tuple(_container(function_service(fn, settings))["command"])
        commands.setdefault(fn.environment, set()).add(command)
    (mlflow,) = (d for d in mlflow_docs(settings) if d["kind"] == "Deployment")
    by_env.setdefault(PLATFORM_ENV, []).append("mlflow")
    commands.setdefault(PLATFORM_ENV, set()).add(tuple(_container(mlflow)["command"]))
    specs = []
    for env in sorted(by_env):
        if len(commands[env]) != 1:  # one image, one entrypoint
            raise RuntimeError(f"image {env} is run with different commands: {sorted(commands[env])}")
        (command,) = commands[env]
        specs.append(ImageSpec(env, command, tuple(by_env[env])))
    return specs


def containerfile(spec: ImageSpec, header: str) -> str:
    env = spec.environment
    sources = "\n".join(f"COPY {d}/ {APP_DIR}/{d}/" for d in SOURCE_DIRS)
    entrypoint = ", ".join(f'"{part}"' for part in spec.entrypoint)
    return f"""# {header}
# The {env} image: pyproject dependency group "{env}" from uv.lock; runs {", ".join(spec.users)}.
# Build context: the repository root. `faaspipe build --env {env}`, or by hand:
#   buildah bud -f manifests/images/{env}.Containerfile \\
#     --ignorefile manifests/images/{env}.Containerfile.dockerignore -t IMAGE .
ARG BASE_IMAGE={DEFAULT_BASE}

FROM ${{BASE_IMAGE}} AS builder
ARG UV_VERSION={uv_version()}
# The base's Python 3.11, never a downloaded one: the final stage has only the base's.
ENV UV_PYTHON=3.11 \\
    UV_PYTHON_PREFERENCE=only-system \\
    UV_PYTHON_DOWNLOADS=never \\
    UV_PROJECT_ENVIRONMENT={VENV} \\
    UV_COMPILE_BYTECODE=1 \\
    UV_LINK_MODE=copy
# The build host's CA bundle, if it passes one (--secret id={CA_SECRET},src=FILE: a proxy's
# CA reaches the downloads and never a layer); else the base's own.
RUN --mount=type=secret,id={CA_SECRET},target={CA_TARGET} {_TRUST} \\
    python3 -m venv /opt/uv && /opt/uv/bin/python -m pip install --quiet --no-cache-dir "uv==${{UV_VERSION}}"
WORKDIR {APP_DIR}
COPY {" ".join(LOCK_FILES)} {APP_DIR}/
RUN --mount=type=secret,id={CA_SECRET},target={CA_TARGET} \\
    --mount=type=cache,target=/root/.cache/uv,id=faaspipe-uv {_TRUST} \\
    /opt/uv/bin/uv sync --locked --no-default-groups --group {env} --no-install-project
{sources}
RUN {VENV}/bin/python -m compileall -q {" ".join(f"{APP_DIR}/{d}" for d in SOURCE_DIRS)}

FROM ${{BASE_IMAGE}}
COPY --from=builder {VENV} {VENV}
{chr(10).join(f"COPY --from=builder {APP_DIR}/{d} {APP_DIR}/{d}" for d in SOURCE_DIRS)}
ENV PATH={VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    VIRTUAL_ENV={VENV} \\
    PYTHONPATH={APP_DIR} \\
    PYTHONDONTWRITEBYTECODE=1 \\
    PYTHONUNBUFFERED=1 \\
    HOME=/tmp
WORKDIR {APP_DIR}
USER {USER_ID}:{USER_ID}
ENTRYPOINT [{entrypoint}]
"""


def ignorefile(header: str) -> str:
    """Only what the Containerfile copies reaches the build (not .venv, .venvs, .faaspipe ...)."""
    allowed = "\n".join(f"!{p}" for p in (*LOCK_FILES, *SOURCE_DIRS))
    return f"# {header}\n*\n{allowed}\n**/__pycache__\n**/*.pyc\n"


def image_files(topology: Topology, settings: ClusterSettings, header: str) -> dict[str, str]:
    """Relative path (under manifests/) → content of every image recipe."""
    files = {}
    for spec in image_specs(topology, settings):
        name = f"{IMAGES_DIR}/{spec.environment}.Containerfile"
        files[name] = containerfile(spec, header)
        files[f"{name}.dockerignore"] = ignorefile(header)
    return files
