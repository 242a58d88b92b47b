"""Authentication and authorisation (issue 10 item 4), after Knative Eventing's model.

Semantics ported from Knative (knative.dev/docs/eventing/features/authorization;
eventing ``pkg/auth/verifier.go``, ``pkg/auth/event_policy.go``):

* a request without a valid token is ``401`` before any policy is looked at;
* no EventPolicy applies → ``default-authorization-mode``: allow-all, deny-all, or
  allow-same-namespace (subjects ``system:serviceaccount:<namespace>:…``), the default;
* policies apply → allowed only when one policy names the subject in ``from`` (exact or a
  ``*``-suffix pattern) and the event passes all of that policy's ``filters``; else ``403``.

The unit tables below check that port; the integration tests run ONE stack with
``FAASPIPE_AUTH=on`` (sample, recorder and the object-events source): refusals never enter
the log, and the pipeline's functions and the broker's triggers work with their own identities.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
import yaml
from aiohttp import web
from kafka import KafkaConsumer, TopicPartition

from localdev.aio import LoopThread
from localdev.config import StackConfig
from localdev.gateway import Gateway
from localdev.render.auth import auth_docs, broker_audience, features_doc
from localdev.render.output import render_files
from shared.auth import Forbidden, Unauthenticated
from shared.auth.bearer import SUBJECT_HEADER, auth_enabled, bearer, bearer_token, own_authorization
from shared.auth.identity import (
    child_name,
    function_subject,
    service_account_subject,
    subscription_subject,
    user_subject,
)
from shared.auth.pipeline import MANUAL_TYPES, pipeline_policies
from shared.auth.policy import (
    ALLOW_ALL,
    ALLOW_SAME_NAMESPACE,
    DENY_ALL,
    EventPolicy,
    authorize,
    subject_matches,
)
from shared.auth.tokens import HmacVerifier, load_or_create_key, mint
from shared.topology import REPO_ROOT, load_topology
from tests.conftest import REPO, TEST_PORT_BASE, Stack, running_stack, wait_until

KEY = b"k" * 32
HTTP = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=2, read=30))
PROMOTED = "dev.faaspipe.model.promoted.v1"
PING = "dev.faaspipe.sample.ping.v1"


# --- tokens --------------------------------------------------------------------------------


def test_a_minted_token_verifies_with_its_subject() -> None:
    claims = HmacVerifier(KEY).verify(mint(KEY, "user:ada"))
    assert claims.sub == "user:ada" and claims.aud == ("faaspipe",)


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (mint(b"x" * 32, "user:ada"), "signature"),
        (mint(KEY, "user:ada", ttl_s=-3600), "expired"),
        (mint(KEY, "user:ada", audience="someone-else"), "audience"),
        (mint(KEY, "user:ada", now=time.time() + 3600), "future"),
        ("not-a-jwt", "malformed"),
        ("a.b.c", "malformed"),
        # alg none (RFC 7519 §6, the classic bypass): header {"alg":"none"}, no signature
        ("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ1c2VyOmFkYSJ9.", "algorithm"),
    ],
)
def test_bad_tokens_are_unauthenticated(token: str, reason: str) -> None:
    with pytest.raises(Unauthenticated, match=reason):
        HmacVerifier(KEY).verify(token)


@pytest.mark.parametrize(
    ("headers", "ok"),
    [
        ({}, False),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, False),
        ({"Authorization": "Bearer "}, False),
        ({"Authorization": "Bearer abc"}, True),
        ({"authorization": "bearer abc"}, True),  # the scheme is case-insensitive (RFC 9110 §11.1)
    ],
)
def test_bearer_header(headers: dict[str, str], ok: bool) -> None:
    if ok:
        assert bearer_token(headers) == "abc"
    else:
        with pytest.raises(Unauthenticated):
            bearer_token(headers)


@pytest.mark.parametrize(
    ("setting", "host", "enabled"),
    [
        (None, "127.0.0.1", False),  # the issue: off by default on loopback ...
        ("auto", "::1", False),
        ("auto", "0.0.0.0", True),  # ... on by default otherwise
        ("auto", "10.0.0.5", True),
        ("on", "127.0.0.1", True),  # an explicit setting wins
        ("off", "0.0.0.0", False),
    ],
)
def test_auth_is_on_by_default_off_loopback(setting: str | None, host: str, enabled: bool) -> None:
    assert auth_enabled(setting, host) is enabled


def test_the_signing_key_is_created_once_private(tmp_path: Path) -> None:
    path = tmp_path / "auth" / "signing.key"
    first = load_or_create_key(path)
    assert load_or_create_key(path) == first and len(first) == 32
    assert path.stat().st_mode & 0o777 == 0o600


# --- EventPolicy semantics (Knative's) -----------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "pattern", "matches"),
    [
        ("system:serviceaccount:default:trusted-app", "system:serviceaccount:default:trusted-app", True),
        ("system:serviceaccount:default:other-app", "system:serviceaccount:default:other-*", True),
        ("system:serviceaccount:default:other", "system:serviceaccount:default:other-*", False),
        ("system:serviceaccount:default:trusted-app2", "system:serviceaccount:default:trusted-app", False),
        ("anything", "*", True),
    ],
)
def test_from_sub_exact_or_suffix_wildcard(subject: str, pattern: str, matches: bool) -> None:
    """EventPolicy ``spec.from[].sub``: "a glob-like pattern to match any suffix" (the CRD)."""
    assert subject_matches(subject, pattern) is matches


SAME_NS = "system:serviceaccount:faaspipe:app"
OTHER_NS = "system:serviceaccount:elsewhere:app"


@pytest.mark.parametrize(
    ("mode", "subject", "allowed"),
    [
        (ALLOW_ALL, OTHER_NS, True),
        (ALLOW_ALL, "user:ada", True),
        (DENY_ALL, SAME_NS, False),
        (ALLOW_SAME_NAMESPACE, SAME_NS, True),
        (ALLOW_SAME_NAMESPACE, OTHER_NS, False),
        (ALLOW_SAME_NAMESPACE, "user:ada", False),
    ],
)
def test_no_policy_applies_the_default_mode_decides(mode: str, subject: str, allowed: bool) -> None:
    attributes = {"type": "t", "source": "/s"}
    if allowed:
        assert authorize(subject, attributes, [], default_mode=mode) is None
    else:
        with pytest.raises(Forbidden):
            authorize(subject, attributes, [], default_mode=mode)


ORDERS = EventPolicy(
    "orders",
    ("system:serviceaccount:default:trusted-app", "system:serviceaccount:default:other-*"),
    ({"cesql": "type IN ('order.created', 'order.updated', 'order.canceled')"},),
)
PUSH = EventPolicy(
    "push", ("system:serviceaccount:default:trusted-app",), ({"exact": {"type": "com.github.push"}},)
)


@pytest.mark.parametrize(
    ("subject", "event_type", "source", "allowed_by"),
    [
        ("system:serviceaccount:default:trusted-app", "order.created", "/shop", "orders"),
        ("system:serviceaccount:default:other-x", "order.updated", "/shop", "orders"),
        # a subject in a policy whose filters the event fails, another policy passes it
        ("system:serviceaccount:default:trusted-app", "com.github.push", "/gh", "push"),
        # listed, but the event passes no filters of its policies
        ("system:serviceaccount:default:other-x", "com.github.push", "/gh", None),
        # in no policy's from: refused even for a type some policy allows (and even though
        # the default mode would have admitted this same-namespace subject)
        ("system:serviceaccount:default:intruder", "order.created", "/shop", None),
    ],
)
def test_policies_apply_subject_and_filters_must_both_pass(
    subject: str, event_type: str, source: str, allowed_by: str | None
) -> None:
    """The example EventPolicy of Knative's authorization docs, evaluated: with policies
    applying, the default mode is not consulted."""
    attributes = {"type": event_type, "source": source}
    if allowed_by:
        policy = authorize(subject, attributes, [ORDERS, PUSH], default_mode=ALLOW_ALL)
        assert policy is not None and policy.name == allowed_by
    else:
        with pytest.raises(Forbidden):
            authorize(subject, attributes, [ORDERS, PUSH], default_mode=ALLOW_ALL)


def test_a_policy_filter_on_the_source() -> None:
    """ "which event types and sources": filters are Trigger filters, on any attribute."""
    policy = EventPolicy("landing", ("user:*",), ({"exact": {"source": "s3://landing"}},))
    assert authorize("user:ada", {"type": "x", "source": "s3://landing"}, [policy]) is policy
    with pytest.raises(Forbidden):
        authorize("user:ada", {"type": "x", "source": "s3://other"}, [policy])


def test_malformed_policy_filters_are_refused_as_triggers_are() -> None:
    with pytest.raises(ValueError, match="dialect"):
        EventPolicy("bad", ("user:*",), ({"exakt": {"type": "x"}},))


# --- the pipeline's policies, from the topology --------------------------------------------


@pytest.fixture(scope="module")
def policies() -> list[EventPolicy]:
    return pipeline_policies(load_topology())


def test_each_function_posts_exactly_what_it_emits(policies: list[EventPolicy]) -> None:
    topology = load_topology()
    emitted = {t for fn in topology.functions.values() for t in fn.emits}
    assert PROMOTED in topology.functions["promote"].emits
    for fn in topology.functions.values():
        for event_type in sorted(emitted):
            attributes = {"type": event_type, "source": f"/faaspipe/{fn.name}"}
            if event_type in fn.emits:
                authorize(function_subject(fn), attributes, policies)
                for sub in fn.subscriptions:  # its replies come from its triggers' identities
                    authorize(subscription_subject(sub), attributes, policies)
            else:
                with pytest.raises(Forbidden):
                    authorize(function_subject(fn), attributes, policies)


@pytest.mark.parametrize(
    ("event_type", "allowed"),
    [
        (PING, True),  # no function emits it: people may
        ("com.example.reading.v1", True),  # a foreign type, as a Knative broker accepts
        (MANUAL_TYPES[0], True),  # a manual rollout decision
        (PROMOTED, False),  # a pipeline fact: promote's alone
        ("dev.faaspipe.object.created.v1", False),
        ("dev.faaspipe.sample.pong.v1", False),
    ],
)
def test_people_post_manual_and_outside_types_only(
    policies: list[EventPolicy], event_type: str, allowed: bool
) -> None:
    attributes = {"type": event_type, "source": "/me"}
    if allowed:
        authorize(user_subject("ada"), attributes, policies)
    else:
        with pytest.raises(Forbidden):
            authorize(user_subject("ada"), attributes, policies)


def test_another_namespaces_workload_is_refused(policies: list[EventPolicy]) -> None:
    with pytest.raises(Forbidden):
        authorize(service_account_subject("promote", "elsewhere"), {"type": PROMOTED}, policies)


def test_trigger_identities_follow_knatives_naming() -> None:
    """``GetOIDCServiceAccountNameForResource``: ``kmeta.ChildName(name, "-oidc-<group>-<kind>")``."""
    (trigger,) = load_topology().functions["sample"].triggers
    assert subscription_subject(trigger) == (
        "system:serviceaccount:faaspipe:sample-ping-oidc-eventing.knative.dev-trigger"
    )
    long = child_name("x" * 80, "-oidc-eventing.knative.dev-trigger")
    assert len(long) <= 63 and long == child_name("x" * 80, "-oidc-eventing.knative.dev-trigger")


# --- rendered: EventPolicies, identities, feature flags, no inline secret -------------------


def test_rendered_event_policies_are_the_pipeline_policies(policies: list[EventPolicy]) -> None:
    docs = auth_docs(load_topology())
    rendered = {d["metadata"]["name"]: d for d in docs if d["kind"] == "EventPolicy"}
    assert set(rendered) == {p.name for p in policies}
    for policy in policies:
        spec = rendered[policy.name]["spec"]
        assert [f["sub"] for f in spec["from"]] == list(policy.subjects)
        assert spec["to"] == [
            {"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "faaspipe"}}
        ]
        for event_type in (PROMOTED, PING, "dev.faaspipe.sample.pong.v1"):  # routes as evaluated locally
            from shared.filters import matches

            assert matches(spec.get("filters", []), {"type": event_type}) == matches(
                policy.filters, {"type": event_type}
            )
    accounts = {d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"}
    assert accounts == set(load_topology().functions)


def test_committed_manifests_carry_identities_flags_and_no_inline_secret() -> None:
    manifests = REPO_ROOT / "manifests"
    features = yaml.safe_load((manifests / "knative" / "config-features.yaml").read_text())
    assert features == features_doc()
    assert features["data"]["authentication-oidc"] == "enabled"
    promote = list(yaml.safe_load_all((manifests / "base" / "functions" / "promote.yaml").read_text()))
    (service,) = [d for d in promote if d["kind"] == "Service"]
    pod = service["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "promote"
    (source,) = pod["volumes"][0]["projected"]["sources"]
    assert source["serviceAccountToken"]["audience"] == broker_audience()
    for rel, content in render_files(load_topology()).items():
        # no token (a JWT's header starts with eyJ) and no signing key in any rendered file
        assert "eyJ" not in content and "signing.key" not in content, rel


# --- the gateway, on its own (a real aiohttp upstream) ---------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def gateway_with_echo() -> Iterator[tuple[str, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.json_response({"ok": True})

    upstream = web.Application()
    upstream.router.add_route("*", "/{rest:.*}", echo)
    echo_port, gateway_port = _free_port(), _free_port()
    echo_loop = LoopThread("echo")
    echo_loop.start([(upstream, "127.0.0.1", echo_port)])
    gateway = Gateway(
        gateway_port,
        lambda fn: [f"http://127.0.0.1:{echo_port}"] if fn == "fn" else None,
        verifier=HmacVerifier(KEY),
    )
    gateway.start()
    try:
        wait_until(lambda: _answers(f"http://127.0.0.1:{gateway_port}/fn/"), 10, what="the gateway")
        yield f"http://127.0.0.1:{gateway_port}", seen
    finally:
        gateway.stop()
        echo_loop.stop()


def _answers(url: str) -> bool:
    try:
        HTTP.request("GET", url)
    except urllib3.exceptions.HTTPError:
        return False
    return True


def test_gateway_requires_a_token_and_forwards_the_verified_subject(
    gateway_with_echo: tuple[str, list[dict[str, str]]],
) -> None:
    url, seen = gateway_with_echo
    for headers in ({}, {"Authorization": "Bearer forged"}, {SUBJECT_HEADER: "user:root"}):
        resp = HTTP.request("POST", f"{url}/fn/predict", body=b"{}", headers=headers)
        assert resp.status == 401 and resp.headers["WWW-Authenticate"] == "Bearer"
    assert seen == []  # nothing reached the function
    token = mint(KEY, "user:ada")
    resp = HTTP.request(
        "POST", f"{url}/fn/predict", body=b"{}", headers={**bearer(token), SUBJECT_HEADER: "user:root"}
    )
    assert resp.status == 200
    (forwarded,) = seen
    assert forwarded[SUBJECT_HEADER] == "user:ada"  # the client's spoofed value was replaced
    assert "Authorization" not in forwarded  # the caller's credential stays at the gateway


# --- configuration ------------------------------------------------------------------------------


def test_the_stack_setting_and_the_functions_token_dir(tmp_path: Path) -> None:
    config = StackConfig.from_env({"FAASPIPE_STATE_DIR": str(tmp_path), "FAASPIPE_AUTH": "on"})
    assert config.auth.enabled and not StackConfig(state_dir=tmp_path).auth.enabled
    env = config.function_env()
    assert env["FAASPIPE_AUTH_TOKEN_DIR"] == str(tmp_path / "auth" / "tokens")
    config.auth.write_workload_tokens(load_topology())
    token = own_authorization({**env, "FAASPIPE_FUNCTION": "promote"})["Authorization"].split()[1]
    assert config.auth.verifier().verify(token).sub == "system:serviceaccount:faaspipe:promote"
    assert own_authorization({**env, "FAASPIPE_FUNCTION": "not-a-function"}) == {}


# --- integration: ONE stack with auth on ----------------------------------------------------------


@pytest.fixture(scope="module")
def auth_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """With ``FAASPIPE_AUTH=on``: sample (ping → pong reply), recorder (records pong and *.csv
    objects), the object-events source, and the data chain ingest → materialise with its
    recorder (chain-recorder)."""
    fns = tmp_path_factory.mktemp("auth-functions")
    for folder in (
        REPO / "functions" / "sample",
        REPO / "functions" / "object_events",
        REPO / "functions" / "ingest",
        REPO / "functions" / "materialise",
        REPO / "tests" / "functions" / "recorder",
        REPO / "tests" / "functions" / "chain_recorder",
    ):
        (fns / folder.name).symlink_to(folder)
    before = os.environ.get("FAASPIPE_AUTH")
    os.environ["FAASPIPE_AUTH"] = "on"  # running_stack copies the environment at entry
    try:
        stack_cm = running_stack(tmp_path_factory.mktemp("auth-state"), TEST_PORT_BASE, str(fns), "memory")
        stack = stack_cm.__enter__()
    finally:
        if before is None:
            os.environ.pop("FAASPIPE_AUTH", None)
        else:
            os.environ["FAASPIPE_AUTH"] = before
    try:
        yield stack
    finally:
        stack_cm.__exit__(None, None, None)


def _user(stack: Stack, name: str = "tester") -> dict[str, str]:
    return bearer(stack.config.auth.mint(user_subject(name)))


def _event_headers(event_type: str, **extra: str) -> dict[str, str]:
    return {
        "ce-specversion": "1.0",
        "ce-id": str(uuid.uuid4()),
        "ce-source": "/tests/auth",
        "ce-type": event_type,
        "content-type": "application/json",
        **extra,
    }


def _ids_in_log(stack: Stack) -> set[str]:
    """Event ids of every record in the broker topic, read up to its current end."""
    config = stack.config
    consumer = KafkaConsumer(bootstrap_servers=config.kafka_bootstrap, enable_auto_commit=False)
    try:
        parts = [
            TopicPartition(config.broker_topic, p) for p in consumer.partitions_for_topic(config.broker_topic)
        ]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        end = consumer.end_offsets(parts)
        ids: set[str] = set()
        while any(consumer.position(p) < end[p] for p in parts):
            for records in consumer.poll(timeout_ms=1000).values():
                for record in records:
                    headers = dict(record.headers or [])
                    if "ce_id" in headers:
                        ids.add(headers["ce_id"].decode())
        return ids
    finally:
        consumer.close()


def _records(stack: Stack, trigger: str, recorder: str = "recorder") -> list[dict[str, Any]]:
    resp = HTTP.request("GET", stack.config.function_url(recorder) + "records", headers=_user(stack))
    assert resp.status == 200, resp.data
    return [r for r in json.loads(resp.data) if r["trigger"] == trigger]


def _metric(stack: Stack, outcome: str) -> float:
    text = HTTP.request("GET", stack.config.url("ingress") + "/metrics").data.decode()
    line = f'faaspipe_ingress_events_total{{outcome="{outcome}"}}'
    return sum(float(row.split()[-1]) for row in text.splitlines() if row.startswith(line))


def test_ingress_without_or_with_a_bad_token_is_401_and_nothing_enters_the_log(auth_stack: Stack) -> None:
    refused = _metric(auth_stack, "unauthenticated")
    tries = [{}, {"Authorization": "Bearer not.a.token"}, bearer(mint(b"x" * 32, user_subject("tester")))]
    ids = []
    for auth in tries:
        headers = _event_headers(PING, **auth)
        resp = auth_stack.post_raw(b'{"message": "hi"}', headers)
        assert resp.status == 401, resp.data
        assert resp.headers["WWW-Authenticate"] == "Bearer"
        ids.append(headers["ce-id"])
    assert not set(ids) & _ids_in_log(auth_stack)
    assert _metric(auth_stack, "unauthenticated") == refused + len(tries)


def test_a_subject_not_allowed_to_post_model_promoted_is_403_and_nothing_enters_the_log(
    auth_stack: Stack,
) -> None:
    refused = _metric(auth_stack, "forbidden")
    config = auth_stack.config
    ids = []
    for subject in (
        user_subject("tester"),
        function_subject("sample"),
        service_account_subject("promote", "other"),
    ):
        headers = _event_headers(PROMOTED, Authorization=f"Bearer {config.auth.mint(subject)}")
        resp = auth_stack.post_raw(b"{}", headers)  # refused before its data is even checked
        assert resp.status == 403, resp.data
        assert json.loads(resp.data)["subject"] == subject
        ids.append(headers["ce-id"])
    assert not set(ids) & _ids_in_log(auth_stack)
    assert _metric(auth_stack, "forbidden") == refused + 3


def test_an_allowed_subject_is_202_and_the_functions_reply_with_their_identities(auth_stack: Stack) -> None:
    """user → ping (202) → the sample-ping trigger's identity delivers it through the gateway →
    sample replies pong, stored under that trigger's identity (sample's EventPolicy) → the
    rec-pong trigger's identity delivers it to the recorder."""
    headers = _event_headers(PING, **_user(auth_stack))
    resp = auth_stack.post_raw(json.dumps({"message": "hello"}).encode(), headers)
    assert resp.status == 202, resp.data
    assert headers["ce-id"] in _ids_in_log(auth_stack)
    pong = wait_until(
        lambda: [r for r in _records(auth_stack, "rec-pong") if r.get("subject") == headers["ce-id"]],
        60,
        what="the pong reply at the recorder",
    )
    assert pong[0]["type"] == "dev.faaspipe.sample.pong.v1"


def test_a_source_posts_with_its_own_identity(auth_stack: Stack) -> None:
    """The object store's webhook reaches object-events through the gateway with its token; the
    source posts object.created to K_SINK as system:serviceaccount:faaspipe:object-events."""
    import io

    key = f"auth/{uuid.uuid4()}.csv"
    data = b"a,b\n1,2\n"
    auth_stack.s3().put_object("landing", key, io.BytesIO(data), len(data))
    created = wait_until(
        lambda: [r for r in _records(auth_stack, "rec-suffix") if str(r.get("subject", "")).endswith(key)],
        60,
        what="object.created at the recorder",
    )
    assert created[0]["type"] == "dev.faaspipe.object.created.v1"


def test_the_data_chain_runs_with_its_own_identities(auth_stack: Stack, tmp_path: Path) -> None:
    """A file lands → object-events posts object.created (its identity) → ingest's trigger
    delivers it and stores ingest's reply dataset.ingested (ingest's policy) → materialise's
    trigger the same with features.materialised: three EventPolicies, end to end."""
    from localdev.datagen import generate, write_csv

    path = write_csv(tmp_path / "readings.csv", generate(200, seed=41, start_udi=1))
    key = f"ai4i/auth/{uuid.uuid4().hex[:8]}/readings.csv"
    auth_stack.s3().fput_object("landing", key, str(path), content_type="text/csv")
    ingested = wait_until(
        lambda: [
            r
            for r in _records(auth_stack, "chain-dataset-ingested", "chain-recorder")
            if r["data"]["source_uri"].endswith(key)
        ],
        120,
        what=f"dataset.ingested for {key}",
    )[0]
    version = ingested["data"]["version"]
    wait_until(
        lambda: [
            r
            for r in _records(auth_stack, "chain-features-materialised", "chain-recorder")
            if r["data"]["version"] == version
        ],
        240,
        what=f"features.materialised for version {version}",
    )


def test_gateway_calls_need_a_token(auth_stack: Stack) -> None:
    gateway = auth_stack.config.url("gateway")
    body = json.dumps({"instances": [{"type": "L"}]}).encode()
    resp = HTTP.request(
        "POST", f"{gateway}/predict/predict", body=body, headers={"content-type": "application/json"}
    )
    assert resp.status == 401  # before routing: no function name is revealed to an anonymous caller
    resp = HTTP.request("GET", f"{gateway}/recorder/records")
    assert resp.status == 401
    assert HTTP.request("GET", f"{gateway}/recorder/records", headers=_user(auth_stack)).status == 200


def test_control_api_needs_an_admin_token(auth_stack: Stack) -> None:
    config = auth_stack.config
    status = config.url("supervisor") + "/status"
    assert HTTP.request("GET", status).status == 401
    assert HTTP.request("POST", config.url("supervisor") + "/shutdown").status == 401
    workload = bearer(config.auth.mint(function_subject("sample")))
    assert HTTP.request("GET", status, headers=workload).status == 403
    assert HTTP.request("POST", config.url("supervisor") + "/scale/sample/2", headers=workload).status == 403
    assert HTTP.request("GET", status, headers=_user(auth_stack)).status == 200
    result = auth_stack.cli("status")  # the CLI acts with its user's token
    assert result.returncode == 0, result.stderr


def test_manual_actions_are_recorded_as_the_authenticated_subject(auth_stack: Stack) -> None:
    import getpass

    from localdev.actor import cli_actor, cli_authorization

    config = auth_stack.config
    assert cli_actor(config) == user_subject(getpass.getuser())
    token = cli_authorization(config)["Authorization"].split()[1]
    assert config.auth.verifier().verify(token).sub == cli_actor(config)


# --- the gateway's gRPC front: the same rule over gRPC metadata --------------------------------


def test_grpc_front_requires_a_token_and_forwards_the_verified_subject() -> None:
    import grpc

    from localdev.grpc_front import GrpcFront
    from tests.test_oip_grpc import Backend, _identity

    backend = Backend()
    backend.server.start()
    gateway = Gateway(
        _free_port(),
        lambda fn: [f"http://127.0.0.1:{backend.port}"] if fn == "echo" else None,
        verifier=HmacVerifier(KEY),
    )
    front = GrpcFront(gateway, {"demo.Echo": "echo"}, _free_port())
    front.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{front.port}")
    echo = channel.unary_unary(
        "/demo.Echo/Say", request_serializer=_identity, response_deserializer=_identity
    )
    try:
        for metadata in ([], [("authorization", "Bearer forged")], [(SUBJECT_HEADER.lower(), "user:root")]):
            with pytest.raises(grpc.RpcError) as refused:
                echo(b"hi", metadata=metadata, timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert backend.calls == []  # nothing reached the function
        token = mint(KEY, "user:ada")
        metadata = [("authorization", f"Bearer {token}"), (SUBJECT_HEADER.lower(), "user:root")]
        assert echo(b"hi", metadata=metadata, timeout=10) == b"echo:hi"
        (_method, seen, _remaining) = backend.calls[-1]
        assert seen[SUBJECT_HEADER.lower()] == "user:ada" and "authorization" not in seen
    finally:
        channel.close()
        front.stop()
        backend.server.stop(0)


def test_a_dlq_replay_is_audited_under_the_authenticated_subject(auth_stack: Stack) -> None:
    """A dead letter (sample fails on purpose past its retries), replayed by the CLI: the
    replay's audit record names the CLI's token subject."""
    import getpass

    from localdev.broker.dlq import list_dead_letters

    config = auth_stack.config
    headers = _event_headers(PING, **_user(auth_stack))
    resp = auth_stack.post_raw(json.dumps({"message": "fail", "fail_times": 1000}).encode(), headers)
    assert resp.status == 202, resp.data
    event_id = headers["ce-id"]
    wait_until(
        lambda: [d for d in list_dead_letters(config) if d.event.id == event_id],
        60,
        what="the dead letter",
    )
    result = auth_stack.cli("dlq", "replay", event_id)
    assert result.returncode == 0, result.stderr
    (replayed,) = wait_until(
        lambda: [d for d in list_dead_letters(config) if d.event.id == event_id and d.replayed],
        30,
        what="the replay marker",
    )[:1]
    assert replayed.replayed_by == user_subject(getpass.getuser())
