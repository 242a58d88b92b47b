"""The images the manifests name: their rendered Containerfiles, and the serving image built from
the lock and running predict exactly as its Knative Service does, against the local stack.

Units (no builder needed): every image environment the manifests name has a Containerfile;
its final stage has no compiler, runs as a numeric non-root user, puts the venv's ``python``
first on ``PATH`` with ``PYTHONPATH`` the app dir, and its entrypoint is the manifests' command.

Integration: the base is made with mmdebstrap (no registry image can be pulled here), the
serving image built with buildah from ``uv.lock`` (its dependencies downloaded inside the
build), then predict started inside it with ``buildah run --isolation chroot --network host``
(podman run is refused by this sandbox's cgroups) with the rendered Service's command, args and
env, the platform's ConfigMap/Secret values being the local test stack's. Everything is built
in a storage root of this run's own, removed afterwards: nothing is cached between runs but
uv's download cache. Skips, saying why, where there is no builder (``make image-tools``
installs buildah and mmdebstrap as root on Debian; CI runs it).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3

from localdev.images import (
    MMDEBSTRAP_BASE,
    Builder,
    BuildError,
    base_from_mmdebstrap,
    build_images,
    find_builder,
    fresh_containerfiles,
)
from localdev.processes import free_port
from localdev.render import HEADER, check, overlays, render
from localdev.render.images import APP_DIR, PLATFORM_ENV, SOURCE_DIRS, VENV, uv_version
from localdev.render.settings import PLATFORM, ClusterSettings
from shared.topology import load_topology
from tests.conftest import REPO, Stack, wait_until
from tests.fixtures_model import MODEL_NAME, publish_models
from tests.test_manifests import MANIFESTS, _by_kind, _objects

IMAGES = MANIFESTS / "images"
COMPILERS = ("gcc", "g++", "cc", "c++", "clang", "build-essential", "make", "cpp", "gfortran", "rustc")
HTTP = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=2, read=60))
ROW = {
    "type": "M",
    "air_temperature_k": 298.1,
    "process_temperature_k": 308.6,
    "rotational_speed_rpm": 1551.0,
    "torque_nm": 42.8,
    "tool_wear_min": 10.0,
}


# --------------------------------------------------------------------------- the Containerfiles


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction: continuation lines joined, comments dropped."""
    out, pending = [], ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, rest = (pending + line).strip().partition(" ")
        out.append((keyword.upper(), " ".join(rest.split())))
        pending = ""
    return out


def stages(text: str) -> list[list[tuple[str, str]]]:
    """The instructions of each build stage, in order (what precedes the first FROM dropped)."""
    found: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions(text):
        if keyword == "FROM":
            found.append([])
        if found:
            found[-1].append((keyword, rest))
    return found


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for keyword, rest in stage:
        if keyword == "ENV":
            env.update(item.split("=", 1) for item in rest.split())  # type: ignore[misc]
    return env


def manifest_images() -> dict[str, set[tuple[str, ...]]]:
    """Image environment → the commands the committed manifests run its image with (every
    container of ``manifests/base`` whose image is ``<registry>/<env>:<tag>``)."""
    prefix = ClusterSettings().registry + "/"
    found: dict[str, set[tuple[str, ...]]] = {}
    for _, doc in _objects(MANIFESTS / "base"):
        template = doc.get("spec", {}).get("template", {})
        if template.get("metadata", {}).get("labels", {}).get("app.kubernetes.io/component") == "dask":
            continue  # the Dask scheduler/workers run the env's `dask` CLI (tests/test_manifests.py)
        spec = template.get("spec", {})
        for container in spec.get("containers", []):
            if not container["image"].startswith(prefix):
                continue  # not one of ours (a platform service's upstream image)
            env = container["image"].removeprefix(prefix).split(":")[0]
            found.setdefault(env, set()).add(tuple(container["command"]))
    return found


def test_every_image_the_manifests_name_has_a_containerfile() -> None:
    named = manifest_images()
    assert PLATFORM_ENV in named and "serving" in named
    topology_envs = {fn.environment for fn in load_topology().functions.values()}
    assert set(named) == topology_envs | {PLATFORM_ENV}
    rendered = {p.name.removesuffix(".Containerfile") for p in IMAGES.glob("*.Containerfile")}
    assert rendered == set(named)
    for env in named:
        assert (IMAGES / f"{env}.Containerfile.dockerignore").is_file(), env


@pytest.mark.parametrize("env", sorted(manifest_images()))
def test_final_stage_is_lean_non_root_and_runs_what_the_manifests_run(env: str) -> None:
    text = (IMAGES / f"{env}.Containerfile").read_text()
    builder, final = stages(text)
    # builder: the Makefile's uv, the locked group only, the base's interpreter
    assert ("ARG", f"UV_VERSION={uv_version()}") in builder
    sync = next(rest for k, rest in builder if k == "RUN" and "uv sync" in rest)
    assert f"--locked --no-default-groups --group {env} --no-install-project" in sync
    assert env_of(builder)["UV_PYTHON_DOWNLOADS"] == "never"
    # final: nothing run (so nothing installed: no compiler, no package manager), only copies
    assert not [rest for k, rest in final if k == "RUN"]
    words = {w.strip('",[]') for k, rest in final for w in rest.split()}
    assert not words & set(COMPILERS)
    copies = [rest for k, rest in final if k in ("COPY", "ADD")]
    assert copies == [f"--from=builder {VENV} {VENV}"] + [
        f"--from=builder {APP_DIR}/{d} {APP_DIR}/{d}" for d in SOURCE_DIRS
    ]
    (user,) = [rest for k, rest in final if k == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0
    env_vars = env_of(final)
    assert env_vars["PATH"].split(":")[0] == f"{VENV}/bin"  # the manifests' `python` is the venv's
    assert env_vars["PYTHONPATH"] == APP_DIR
    (entrypoint,) = [json.loads(rest) for k, rest in final if k == "ENTRYPOINT"]
    assert {tuple(entrypoint)} == manifest_images()[env]


def test_ignore_files_let_in_only_what_the_stages_copy() -> None:
    for path in IMAGES.glob("*.dockerignore"):
        lines = [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]
        assert lines[0] == "*", path
        assert {ln[1:] for ln in lines if ln.startswith("!")} == {"pyproject.toml", "uv.lock", *SOURCE_DIRS}


def test_render_check_covers_the_containerfiles(tmp_path: Path) -> None:
    topology = load_topology()
    render(topology, tmp_path)
    assert check(topology, tmp_path) == []
    serving = tmp_path / "images" / "serving.Containerfile"
    serving.write_text(serving.read_text().replace("USER 65532", "USER 0"))
    (tmp_path / "images" / "gone.Containerfile").write_text(f"# {HEADER}\n")
    assert check(topology, tmp_path) == ["images/gone.Containerfile", "images/serving.Containerfile"]


def test_no_builder_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(BuildError, match="no image builder here"):
        find_builder()


def test_each_builder_builds_from_the_repo_root_with_the_rendered_files() -> None:
    files = fresh_containerfiles(["serving"])["serving"]
    for name in ("buildah", "podman", "docker"):
        cmd = Builder(name, name).build_cmd(*files, "r/serving:t", "localhost/base:x", REPO)
        assert cmd[-1] == str(REPO) and cmd[cmd.index("-f") + 1] == str(files[0]), name
        assert cmd[cmd.index("-t") + 1] == "r/serving:t" and "BASE_IMAGE=localhost/base:x" in cmd, name
        if name == "docker":  # reads <Containerfile>.dockerignore beside it by itself
            assert files[1].name == files[0].name + ".dockerignore"
        else:
            assert cmd[cmd.index("--ignorefile") + 1] == str(files[1]), name
    with pytest.raises(BuildError, match="no image environment 'nope'"):
        fresh_containerfiles(["nope"])


# --------------------------------------------------------------------------- the serving image


def _timed(what: str, seconds: float) -> None:
    print(f"[images] {what}: {seconds:.1f} s", flush=True)


@pytest.fixture(scope="module")
def buildah(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Builder]:
    """buildah with a storage root of this run's own (removed afterwards)."""
    try:
        builder = find_builder()
    except BuildError as exc:
        pytest.skip(f"{exc}; CI runs `make image-tools` first, which says why it could not")
    if builder.name != "buildah":
        pytest.skip(f"the image test runs images with `buildah run` (builder here: {builder.name})")
    if not shutil.which("mmdebstrap"):
        pytest.skip("mmdebstrap is not installed: `make image-tools` (root, apt-get) installs it")
    root = tmp_path_factory.mktemp("containers")
    conf = root / "storage.conf"
    driver = os.environ.get("STORAGE_DRIVER", "overlay")
    conf.write_text(
        f'[storage]\ndriver = "{driver}"\ngraphroot = "{root / "graph"}"\nrunroot = "{root / "run"}"\n'
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CONTAINERS_STORAGE_CONF", str(conf))
        yield builder
        for cmd in (["rm", "--all"], ["rmi", "--all", "--force"]):  # this run's own storage only
            subprocess.run([builder.path, *cmd], capture_output=True, check=False)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def serving_image(buildah: Builder) -> str:
    _timed("base image from mmdebstrap", base_from_mmdebstrap(buildah, MMDEBSTRAP_BASE))
    registry = "localhost/faaspipe-test"
    (seconds,) = build_images(
        ["serving"], registry=registry, tag="ci", base=MMDEBSTRAP_BASE, builder=buildah
    ).values()
    image = f"{registry}/serving:ci"
    _timed(f"{image} built (cold but for uv's download cache)", seconds)
    listing = subprocess.run(
        [buildah.path, "images", "--format", "{{.Name}}:{{.Tag}} {{.Size}}"], capture_output=True, text=True
    )
    print(f"[images] sizes:\n{listing.stdout}", flush=True)
    return image


def _container_of(name: str) -> dict[str, Any]:
    services = _by_kind([doc for _, doc in _objects(MANIFESTS / "base")], "serving.knative.dev/v1", "Service")
    ((svc,),) = [services[name]]
    (container,) = svc["spec"]["template"]["spec"]["containers"]
    return container


def cluster_env_on_local_stack(
    container: dict[str, Any], local_env: dict[str, str]
) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """The env a rendered container gets on the cluster (ConfigMap and Secret ``faaspipe-platform``
    by envFrom, then its own ``env``, ``K_SINK`` from its SinkBinding), with every platform value
    the local stack's: what ``test_every_function_runs_on_the_cluster_as_localdev_starts_it`` shows
    to be the same settings by name. Paths in the pod stay the pod's: the state directory
    (scratch in the image) and any setting naming one of the container's volume mounts, which
    the local directory of that setting is bound to (host path, pod path)."""
    base = [doc for _, doc in _objects(MANIFESTS / "base")]
    ((platform,),) = [_by_kind(base, "v1", "ConfigMap")[PLATFORM]]
    data = platform["data"]
    secret = next(o for o in overlays() if o.name == "dev").secrets[PLATFORM]
    assert {next(iter(ref.values()))["name"] for ref in container["envFrom"]} == {PLATFORM}
    env = {name: local_env[name] for name in (*data, *secret, "K_SINK") if name in local_env}
    env["FAASPIPE_STATE_DIR"] = data["FAASPIPE_STATE_DIR"]
    binds = []
    mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
    for name, value in data.items():
        if value in mounts and name in env:
            if Path(env[name]).is_dir():
                binds.append((env[name], value))
            env[name] = value
    env.update({e["name"]: e["value"] for e in container["env"]})
    return env, binds


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the session we started (buildah run and predict under it), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
            proc.wait(wait)
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def _with_port(args: list[str], port: int) -> list[str]:
    i = args.index("--port")
    return [*args[: i + 1], str(port), *args[i + 2 :]]


@pytest.mark.integration
@pytest.mark.timeout(1800)  # base + cold build + start: ~2 min on a quiet machine, 10+ on a loaded one
def test_the_serving_image_runs_predict_as_its_knative_service_does(
    buildah: Builder, serving_image: str, stack: Stack, tmp_path: Path
) -> None:
    (published,) = publish_models(stack.config.function_env(), [151])  # the champion from now on
    container = _container_of("predict")
    assert container["image"].split("/")[-1].split(":")[0] == "serving"
    env, binds = cluster_env_on_local_stack(container, stack.config.function_env())
    port = free_port()
    argv = [*container["command"], *_with_port(container["args"], port)]
    ctr = subprocess.run([buildah.path, "from", serving_image], capture_output=True, text=True, check=True)
    name = ctr.stdout.strip()
    # no compiler in what is shipped, and the process is not root
    probe = subprocess.run(
        [
            buildah.path,
            "run",
            "--isolation",
            "chroot",
            name,
            "--",
            "sh",
            "-c",
            "id -u; command -v gcc cc c++ clang make || true; command -v python",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    uid, *rest = probe.stdout.split()
    assert uid == "65532" and rest == [f"{VENV}/bin/python"], probe.stdout
    cmd = [buildah.path, "run", "--isolation", "chroot", "--network", "host"]
    cmd += [f"--env={k}={v}" for k, v in sorted(env.items())]
    cmd += [f"--volume={host}:{pod}:ro" for host, pod in binds]
    log = (tmp_path / "predict.log").open("wb")
    start = time.monotonic()
    proc = subprocess.Popen(
        [*cmd, name, "--", *argv],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            assert proc.poll() is None, (tmp_path / "predict.log").read_text()[-3000:]
            try:
                return HTTP.request("GET", base + "/health/readiness").status == 200
            except urllib3.exceptions.HTTPError:
                return False

        wait_until(ready, 120, what="predict in the image to be ready")
        _timed("predict in the image: exec to readiness", time.monotonic() - start)
        resp = HTTP.request(
            "POST",
            base + "/predict",
            body=json.dumps({"instances": [ROW]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        assert resp.status == 200, resp.data
        answer = json.loads(resp.data)
        assert answer["model_name"] == MODEL_NAME and answer["model_version"] == published["version"]
        (prediction,) = answer["predictions"]
        assert 0.0 <= prediction["probability"] <= 1.0 and prediction["label"] in (0, 1)
        inputs = [
            {"name": k, "shape": [1], "datatype": "BYTES" if k == "type" else "FP32", "data": [v]}
            for k, v in ROW.items()
        ]
        resp = HTTP.request(
            "POST",
            f"{base}/v2/models/{MODEL_NAME}/infer",
            body=json.dumps({"inputs": inputs}).encode(),
            headers={"Content-Type": "application/json"},
        )
        assert resp.status == 200, resp.data
        outputs = {o["name"]: o["data"] for o in json.loads(resp.data)["outputs"]}
        assert outputs["probability"] == pytest.approx([prediction["probability"]], abs=1e-6)
    finally:
        _stop(proc)
        log.close()
        subprocess.run([buildah.path, "rm", name], capture_output=True, check=False)
