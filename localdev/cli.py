"""``faaspipe``: the one-machine runtime's command line.

faaspipe up        start the stack in the background (Kafka, S3, MLflow, broker, functions)
faaspipe status    health of every component, replicas and URLs
faaspipe logs      a component's log
faaspipe down      stop everything; no process is left behind
faaspipe dlq list|replay   inspect and re-deliver dead letters
faaspipe rollout status|promote|rollback MODEL   a model's progressive rollout
faaspipe build     the images the manifests name (buildah, podman or docker)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import urllib3

from localdev.actor import cli_authorization
from localdev.config import PORT_OFFSETS, StackConfig
from localdev.processes import kill_leftovers, pid_alive, port_free
from shared.topology import REPO_ROOT

_HTTP = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=1.0, read=5.0))


def _env(args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ)
    if args.state_dir:
        env["FAASPIPE_STATE_DIR"] = args.state_dir
    return env


def _config(args: argparse.Namespace) -> StackConfig:
    config = StackConfig.from_env(_env(args))
    stack_file = config.state_dir / "stack.json"
    return StackConfig.load(config.state_dir) if stack_file.exists() and args.command != "up" else config


def _supervisor_pid(config: StackConfig) -> int | None:
    pid_file = config.state_dir / "supervisor.pid"
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def _status(config: StackConfig) -> dict | None:  # type: ignore[type-arg]
    try:
        resp = _HTTP.request("GET", config.url("supervisor") + "/status", headers=cli_authorization(config))
    except urllib3.exceptions.HTTPError:
        return None
    return json.loads(resp.data) if resp.status == 200 else None


def _print_status(status: dict) -> None:  # type: ignore[type-arg]
    print(f"stack: {status['state']}  (state dir {status['state_dir']})")
    if status.get("message"):
        print(status["message"])
    for comp in status["components"]:
        print(f"  {comp['name']:<12} {comp['state']:<9} {comp.get('url', '')}")
    for name, fn in status["functions"].items():
        ready = sum(1 for r in fn["replicas"] if r["state"] == "ready")
        scaling = fn.get("scaling") or {}
        load = (
            f"lag {sum(scaling.get('lag', {}).values())}"
            if fn["triggers"]
            else f"in-flight {scaling.get('in_flight', 0)}"
        )
        print(
            f"  fn {name:<14} {ready}/{scaling.get('desired', len(fn['replicas']))} ready  {load:<12} {fn['url']}"
        )
        for trigger in fn["triggers"]:
            t = (scaling.get("triggers") or {}).get(trigger) or {}
            print(
                f"     trigger {trigger}: {t.get('consumers', '?')} consumer(s), lag {t.get('lag')}"
                + (f"; {t['decision']}" if t.get("decision") else "")
            )
        if scaling.get("decision"):
            print(f"     autoscaler: {scaling['decision']}")
        if scaling.get("poll_error"):
            print(f"     autoscaler error: {scaling['poll_error']}")
        if scaling.get("last_scale_event"):
            print(f"     last scale: {scaling['last_scale_event']}")


def cmd_up(args: argparse.Namespace) -> int:
    from localdev import preflight

    problems = preflight.check(_env(args))  # before anything starts: nothing to clean up
    if problems:
        print("cannot start: these settings do not work:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        print("see the Settings section of README.md.", file=sys.stderr)
        return 2
    config = _config(args)
    if _supervisor_pid(config):
        status = _status(config)
        if status and status["state"] in ("running", "starting"):
            print("faaspipe is already running.")
            _print_status(status)
            return 0
    kill_leftovers(config.state_dir / "pids")
    busy = [f"{name} ({port})" for name, port in config.ports.items() if not port_free(port)]
    if busy:
        print("cannot start: these ports are in use: " + ", ".join(busy), file=sys.stderr)
        print(
            "stop what uses them, or move the stack with FAASPIPE_PORT_BASE=<n> "
            f"(uses base+{min(PORT_OFFSETS.values())}..base+{max(PORT_OFFSETS.values())}).",
            file=sys.stderr,
        )
        return 2
    config.save()
    config.logs_dir.mkdir(parents=True, exist_ok=True)
    log = open(config.logs_dir / "supervisor.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "localdev.supervisor", "--state-dir", str(config.state_dir)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        start_new_session=True,
    )
    log.close()
    print(f"starting faaspipe (supervisor pid {proc.pid}, logs in {config.logs_dir}) ...", flush=True)
    deadline = time.monotonic() + config.start_timeout_s + 60
    status = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            status = status or {}
            print(f"start-up failed (supervisor exited with {proc.returncode}).", file=sys.stderr)
            if status.get("message"):
                print(status["message"], file=sys.stderr)
            else:
                print((config.logs_dir / "supervisor.log").read_text()[-3000:], file=sys.stderr)
            kill_leftovers(config.state_dir / "pids")
            return 1
        status = _status(config) or status
        if status and status["state"] == "running":
            _print_status(status)
            print(
                f"\nPost events to {config.ingress_url}; functions at {config.url('gateway')}/<name>/; "
                "stop with `faaspipe down`."
            )
            return 0
        if status and status["state"] == "failed":
            print("start-up failed: " + status["message"], file=sys.stderr)
            try:
                proc.wait(60)  # the supervisor stops what it started, then exits
            except subprocess.TimeoutExpired:
                cmd_down(args)  # too slow (a busy machine): stop it and whatever it left
            return 1
        time.sleep(0.3)
    print("start-up timed out; stopping.", file=sys.stderr)
    cmd_down(args)
    return 1


def cmd_down(args: argparse.Namespace) -> int:
    config = _config(args)
    pid = _supervisor_pid(config)
    if pid:
        try:
            _HTTP.request("POST", config.url("supervisor") + "/shutdown", headers=cli_authorization(config))
        except urllib3.exceptions.HTTPError:
            os.kill(pid, 15)
        deadline = time.monotonic() + 90
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if pid_alive(pid):
            os.kill(pid, 9)
    leftovers = kill_leftovers(config.state_dir / "pids")
    if leftovers:
        print("killed leftover processes: " + ", ".join(leftovers))
    print("faaspipe stopped." if pid else "faaspipe was not running.")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    config = _config(args)
    status = _status(config)
    if status is None:
        print("faaspipe is not running.", file=sys.stderr)
        return 3
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        _print_status(status)
    return 0 if status["state"] == "running" else 1


def cmd_logs(args: argparse.Namespace) -> int:
    config = _config(args)
    logs = sorted(config.logs_dir.glob("*.log")) if config.logs_dir.exists() else []
    if not args.component:
        print("\n".join(p.stem for p in logs) or "no logs yet")
        return 0
    path = config.logs_dir / f"{args.component}.log"
    if not path.exists():
        print(f"no log named {args.component!r}; have: {', '.join(p.stem for p in logs)}", file=sys.stderr)
        return 2
    lines = path.read_text(errors="replace").splitlines()
    print("\n".join(lines[-args.lines :]))
    if args.follow:
        subprocess.call(["tail", "-n", "0", "-f", str(path)])
    return 0


def cmd_dlq(args: argparse.Namespace) -> int:
    from localdev.broker import dlq

    config = _config(args)
    if args.dlq_command == "list":
        letters = [d.summary() for d in dlq.list_dead_letters(config) if args.all or not d.replayed]
        if args.json:
            print(json.dumps(letters, indent=2))
        for d in [] if args.json else letters:
            flag = (
                f" (replayed by {d['replayed_by'] or '?'} at {d['replayed_at'] or '?'})"
                if d["replayed"]
                else ""
            )
            print(f"{d['ref']:>8}  {d['type']}  id={d['id']}  trigger={d['trigger']}  code={d['code']}{flag}")
            print(f"          {str(d['error'])[:200]}")
        if not letters and not args.json:
            print("no dead letters")
        return 0
    replayed = dlq.replay(config, set(args.refs) if args.refs else None, args.trigger)
    print(f"replayed {len(replayed)} dead letter(s)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from localdev import pipeline

    return pipeline.run(_config(args), timeout_s=args.timeout, force=args.force)


def cmd_events(args: argparse.Namespace) -> int:
    from localdev.event_log import EventLog
    from shared.cloudevents_io import to_json_dict

    log = EventLog(_config(args), from_beginning=args.all, topic=args.topic)
    try:
        for event in log.events(None if args.follow else 2.0):
            if args.type and not event.get_type().startswith(args.type):
                continue
            doc = to_json_dict(event)
            line = (
                json.dumps(doc)
                if args.json
                else (
                    f"{doc.get('time', '')}  {doc['type']}  {doc.get('subject', '')}  {json.dumps(doc.get('data'))[:160]}"
                )
            )
            print(line, flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        log.close()
    return 0


def cmd_scale(args: argparse.Namespace) -> int:
    config = _config(args)
    try:
        resp = _HTTP.request(
            "POST",
            f"{config.url('supervisor')}/scale/{args.function}/{args.replicas}",
            headers=cli_authorization(config),
        )
    except urllib3.exceptions.HTTPError:
        print("faaspipe is not running.", file=sys.stderr)
        return 3
    print(resp.data.decode())
    return 0 if resp.status == 202 else 1


def cmd_rollout(args: argparse.Namespace) -> int:
    from localdev import rollout_cli

    config = _config(args)
    if args.rollout_command == "status":
        return rollout_cli.status(config, args.model, as_json=args.json)
    decision = "promote" if args.rollout_command == "promote" else "rollback"
    return rollout_cli.decide(config, args.model, decision, args.reason)


def cmd_render(args: argparse.Namespace) -> int:
    from localdev import render

    return render.main(args.render_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="faaspipe", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--state-dir", help="state directory (default .faaspipe/ or $FAASPIPE_STATE_DIR)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start the local stack in the background")
    sub.add_parser("down", help="stop the local stack")
    status = sub.add_parser("status", help="show component health")
    status.add_argument("--json", action="store_true")
    logs = sub.add_parser("logs", help="show a component's log (no name: list them)")
    logs.add_argument("component", nargs="?")
    logs.add_argument("-n", "--lines", type=int, default=50)
    logs.add_argument("-f", "--follow", action="store_true")
    run = sub.add_parser("run", help="the main job: drop AI4I into landing, wait for a serving champion")
    run.add_argument("--timeout", type=float, default=1800.0)
    run.add_argument("--force", action="store_true", help="upload and retrain even if a champion serves")
    events = sub.add_parser("events", help="print events from the broker log")
    events.add_argument("--all", action="store_true", help="from the beginning of the log, not from now")
    events.add_argument("-f", "--follow", action="store_true")
    events.add_argument("--type", help="type prefix, e.g. dev.faaspipe.model.")
    events.add_argument("--json", action="store_true")
    events.add_argument("--topic", help="another topic, e.g. faaspipe.predictions (the prediction log)")
    scale = sub.add_parser(
        "scale", help="set a function's replicas now (the autoscaler decides again next poll)"
    )
    scale.add_argument("function")
    scale.add_argument("replicas", type=int)
    render = sub.add_parser("render", help="write manifests/ from the topology (--check: fail if stale)")
    render.add_argument("render_args", nargs=argparse.REMAINDER)
    build = sub.add_parser("build", help="build (--push: and push) the images manifests/ names")
    build.add_argument("build_args", nargs=argparse.REMAINDER)
    dlq = sub.add_parser("dlq", help="dead letters")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    dlq_list = dlq_sub.add_parser("list")
    dlq_list.add_argument("--all", action="store_true", help="include replayed ones")
    dlq_list.add_argument("--json", action="store_true")
    dlq_replay = dlq_sub.add_parser("replay")
    dlq_replay.add_argument("refs", nargs="*", help="partition:offset refs or event ids (default: all)")
    dlq_replay.add_argument("--trigger")
    rollout = sub.add_parser("rollout", help="a model's progressive rollout: status, or decide it by hand")
    rollout_sub = rollout.add_subparsers(dest="rollout_command", required=True)
    rollout_status = rollout_sub.add_parser("status")
    rollout_status.add_argument("model")
    rollout_status.add_argument("--json", action="store_true")
    for verb in ("promote", "rollback"):
        decide = rollout_sub.add_parser(verb)
        decide.add_argument("model")
        decide.add_argument("--reason", default=f"{verb} by hand")
    return parser


def main(argv: list[str] | None = None) -> None:
    try:
        try:
            code = _dispatch(sys.argv[1:] if argv is None else argv)
        except SystemExit as exit_:  # argparse's --help and usage errors, render's own parser
            code = exit_.code
        sys.stdout.flush()  # here, where a closed pipe can still be handled
    except BrokenPipeError:
        # The reader went away (`faaspipe status | head`): exit quietly, as the Python docs
        # advise: point stdout at devnull so the interpreter's final flush cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise SystemExit(1) from None
    raise SystemExit(code)


def _dispatch(argv: list[str]) -> int | str | None:
    if argv[:1] == ["render"]:  # its own options (--out, --check, --registry) pass through untouched
        from localdev import render

        return render.main(argv[1:])
    if argv[:1] == ["build"]:  # its own options (--env, --push, --base ...) pass through untouched
        from localdev import images

        return images.main(argv[1:])
    args = build_parser().parse_args(argv)
    handlers = {
        "up": cmd_up,
        "down": cmd_down,
        "status": cmd_status,
        "logs": cmd_logs,
        "dlq": cmd_dlq,
        "render": cmd_render,
        "run": cmd_run,
        "events": cmd_events,
        "scale": cmd_scale,
        "rollout": cmd_rollout,
    }
    return handlers[args.command](args)


if __name__ == "__main__":
    main()
