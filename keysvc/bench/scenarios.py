"""The bench's scenarios: what each one sends, to which server, and what it must answer.

Every scenario drives one key (h2load repeats one request body), made through
the real admin API: the cache-hit cost does not depend on which key is hit,
and the counter path takes the same Lua call whatever the key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import duration_pb2

from keysvc.bench.procs import BenchError, Redis, Server, bootstrap, start_keysvc
from keysvc.v1 import keysvc_pb2 as pb

__all__ = [
    "EXTAUTHZ_METHOD", "NAMES", "VALIDATE_METHOD", "Fixture", "Scenario", "extauthz_request", "prepare",
    "probe", "scenarios", "stack_of",
]

VALIDATE_METHOD = "/keysvc.v1.KeyService/Validate"
EXTAUTHZ_METHOD = "/envoy.service.auth.v3.Authorization/Check"
NAMES = ("floor", "hit", "miss", "limited", "malformed", "extauthz", "hit-workers2",
         "floor-aio", "hit-aio", "miss-aio", "stall", "stall-aio", "inprocess",
         "envoy-none", "envoy-native", "envoy-grpc", "envoy-http", "http", "envoy-grpc-workers2",
         "envoy-http-workers2")
_FLOOR_SYNC = ("--stack", "sync", "--threads", "16")  # as keysvc's default KEYSVC_GRPC_THREADS
# Stacks named, not left to `auto` (which follows the bench's pinning): each row says what it ran.
_SYNC = ("--grpc-stack", "sync")
_AIO = ("--grpc-stack", "aio")
# High enough that no run of any length on one core reaches it: the counter
# is taken on every call, but never refuses.
_NEVER_REACHED = 4_000_000_000
_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Fixture:
    """Keys and answers made once, before any scenario runs."""

    store: str
    admin_secret: str
    hit_key: str
    limited_key: str
    malformed_key: str
    valid_response: bytes  # keysvc's serialized VALID answer for hit_key

    @property
    def admin_metadata(self) -> list[tuple[str, str]]:
        """The metadata of an admin call."""
        return [("authorization", f"Bearer {self.admin_secret}")]


@dataclass(frozen=True, slots=True)
class Scenario:
    """One row of the table."""

    name: str
    meaning: str
    method: str  # the gRPC method; for an HTTP row (`via`), the path of its GET
    request: bytes  # the serialized request (without the gRPC prefix)
    server_args: tuple[str, ...] = ()
    expect: str = "VALID"  # what the probe must see: a Code name, "allow" (HTTP rows: a bad key's status)
    floor: bool = False
    workers: int = 1  # > 1: worker i is pinned to the server's core, then the client's
    stall: bool = False  # the store is SIGSTOPped and misses flood in during the load (_bench_stall)
    via: str = ""  # an HTTP row (keysvc.bench.envoy): envoy-none|envoy-native|envoy-grpc|envoy-http|http
    headers: tuple[tuple[str, str], ...] = ()  # an HTTP row's request headers


def _validate(key: str) -> bytes:
    return pb.ValidateRequest(key=key).SerializeToString()


def extauthz_request(key: str) -> bytes:
    """A CheckRequest as Envoy sends it for `GET /` with the key in x-api-key."""
    from envoy.service.auth.v3 import attribute_context_pb2 as ctx
    from envoy.service.auth.v3 import external_auth_pb2 as authz

    http = ctx.AttributeContext.HttpRequest(
        id="bench", method="GET", path="/", host="app.local", scheme="http", protocol="HTTP/1.1",
        headers={"x-api-key": key, ":path": "/", ":method": "GET", ":authority": "app.local"},
    )
    attributes = ctx.AttributeContext(request=ctx.AttributeContext.Request(http=http))
    request = authz.CheckRequest(attributes=attributes)
    return bytes(request.SerializeToString())


def scenarios(fixture: Fixture) -> dict[str, Scenario]:
    """Every scenario, by name, in the order of the table."""
    from keysvc.bench import inprocess

    hit = _validate(fixture.hit_key)
    return {
        "floor": Scenario("floor", "empty Validate handler on the synchronous grpc.server (16 threads), "
                          "same-size answer", VALIDATE_METHOD, hit, _FLOOR_SYNC, floor=True),
        "hit": Scenario("hit", "Validate, warm cache, key without limits: never leaves the process",
                        VALIDATE_METHOD, hit, _SYNC),
        "miss": Scenario("miss", "Validate with --cache-ttl-s 0: reads Redis on every call",
                         VALIDATE_METHOD, hit, (*_SYNC, "--cache-ttl-s", "0")),
        "limited": Scenario("limited", "Validate, warm cache, policy with a rate limit never reached: "
                            "one atomic counter call (Lua) per call", VALIDATE_METHOD,
                            _validate(fixture.limited_key), _SYNC),
        "malformed": Scenario("malformed", "Validate of a key-shaped string with a wrong checksum: "
                              "refused offline", VALIDATE_METHOD, _validate(fixture.malformed_key), _SYNC,
                              expect="MALFORMED"),
        "extauthz": Scenario("extauthz", "Envoy ext_authz Check, valid key in x-api-key, warm cache",
                             EXTAUTHZ_METHOD, extauthz_request(fixture.hit_key), _SYNC, expect="allow"),
        "hit-workers2": Scenario("hit-workers2", "hit on `serve --workers 2`: worker 0 on the server's "
                                 "core, worker 1 on the client's (shared with h2load and redis-server)",
                                 VALIDATE_METHOD, hit, (*_SYNC, "--workers", "2"), workers=2),
        "floor-aio": Scenario("floor-aio", "the same empty handler on grpc.aio + uvloop: the other stack",
                              VALIDATE_METHOD, hit, floor=True),
        "hit-aio": Scenario("hit-aio", "hit on --grpc-stack aio", VALIDATE_METHOD, hit, _AIO),
        "miss-aio": Scenario("miss-aio", "miss on --grpc-stack aio", VALIDATE_METHOD, hit,
                             (*_AIO, "--cache-ttl-s", "0")),
        "stall": Scenario("stall", "hit while Redis is SIGSTOPped and a flood of misses waits on it",
                          VALIDATE_METHOD, hit, _SYNC, stall=True),
        "stall-aio": Scenario("stall-aio", "stall on --grpc-stack aio", VALIDATE_METHOD, hit, _AIO,
                              stall=True),
        # Not driven by h2load: keysvc.bench.inprocess times the library in a pinned process.
        "inprocess": Scenario("inprocess", inprocess.MEANING, VALIDATE_METHOD, hit),
        **_http_rows(fixture.hit_key),
    }


def _http_rows(key: str) -> dict[str, Scenario]:
    """The rows through a real Envoy (deploy/envoy/ configs), and forward-auth straight to /authz."""
    by_header = (("x-api-key", key),)
    # What deploy/nginx/nginx.conf's auth_request sends keysvc for `GET /`.
    nginx = (*by_header, ("x-original-uri", "/"), ("x-original-method", "GET"),
             ("x-forwarded-for", "127.0.0.1"))
    http_mode = ("--authz-proxy", "envoy", "--authz-trusted-proxy-depth", "1")
    workers = ("--workers", "2")

    def envoy(name: str, via: str, meaning: str, args: tuple[str, ...] = (), bad: str = "401",
              n: int = 1) -> Scenario:
        meaning = f"Envoy (shipped config, one worker), HTTP/1.1, app a direct_response: {meaning}"
        return Scenario(name, meaning, "/", b"", args, expect=bad, workers=n, via=via, headers=by_header)

    rows = (
        envoy("envoy-none", "envoy-none", "no auth filter (Envoy's own ceiling)", bad="200"),
        envoy("envoy-native", "envoy-native", "Envoy's api_key_auth filter, the key in its config "
              "(no lifecycle)"),
        envoy("envoy-grpc", "envoy-grpc", "ext_authz gRPC Check to keysvc, warm cache", _SYNC),
        envoy("envoy-http", "envoy-http", "ext_authz http_service to keysvc's HTTP listener (/authz prefix), "
              "warm cache", http_mode),
        Scenario("http", "forward-auth GET /authz straight to keysvc's HTTP listener, nginx's headers, "
                 "no Envoy",
                 "/authz", b"", ("--authz-proxy", "nginx", "--authz-trusted-proxy-depth", "1"), expect="401",
                 via="http", headers=nginx),
        envoy("envoy-grpc-workers2", "envoy-grpc", "envoy-grpc on `serve --workers 2` (as hit-workers2)",
              (*_SYNC, *workers), n=2),
        envoy("envoy-http-workers2", "envoy-http", "envoy-http on `serve --workers 2` (as hit-workers2)",
              (*http_mode, *workers), n=2),
    )
    return {row.name: row for row in rows}


def stack_of(name: str) -> str:
    """The gRPC stack a scenario runs on: its name says so (`-aio`), else the synchronous one."""
    return "aio" if name.endswith("-aio") else "sync"


def _code_name(code: int) -> str:
    return pb.Code.Name(code).removeprefix("CODE_")


def probe(server: Server, scenario: Scenario) -> int | None:
    """Call the scenario once (twice: cold, then warm) with a real gRPC client.

    Returns:
        the size in bytes of the gRPC frame of the answer, or None when the
        server does not serve the method (extauthz not there yet).

    Raises:
        BenchError: the answer is not the one the scenario expects.
    """
    if scenario.method == EXTAUTHZ_METHOD:
        return _probe_extauthz(server, scenario)
    stub = server.stub()
    request = pb.ValidateRequest.FromString(scenario.request)
    for _ in range(2):
        response = stub.Validate(request, timeout=_TIMEOUT_S)
    code = _code_name(response.code)
    if code != scenario.expect:
        raise BenchError(f"{scenario.name}: probe answered {code} ({response.message}), "
                         f"want {scenario.expect}")
    if scenario.name == "limited" and not response.HasField("rate_limit"):
        raise BenchError("limited: the answer carries no rate-limit state: the counter path was not taken")
    return 5 + int(response.ByteSize())


def _probe_extauthz(server: Server, scenario: Scenario) -> int | None:
    from envoy.service.auth.v3 import external_auth_pb2 as authz

    call: Callable[..., Any] = server.channel().unary_unary(
        EXTAUTHZ_METHOD, request_serializer=None, response_deserializer=authz.CheckResponse.FromString,
    )
    try:
        for _ in range(2):
            response = call(scenario.request, timeout=_TIMEOUT_S)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
            return None
        raise BenchError(f"extauthz: probe failed: {exc.code().name}: {exc.details()}") from None
    if response.status.code != 0 or not response.HasField("ok_response"):
        raise BenchError(f"extauthz: probe was denied (status {response.status.code}), want allow")
    return 5 + int(response.ByteSize())


def prepare(workdir: Path, redis: Redis) -> Fixture:
    """Bootstrap an admin key, make the bench's policy and keys, and record a VALID answer.

    Raises:
        BenchError: any step failed.
    """
    secret = bootstrap(redis.url)
    # Set-up is not measured: on a loaded machine, let a slow store answer rather than fail closed.
    setup = start_keysvc("setup", redis.url, workdir, None, "--store-timeout-ms", "2000")
    try:
        stub = setup.stub()
        admin = [("authorization", f"Bearer {secret}")]
        window = duration_pb2.Duration(seconds=1)
        stub.CreatePolicy(pb.CreatePolicyRequest(policy=pb.Policy(
            policy_id="bench-limited", description="rate limit the bench never reaches",
            rate_limit=pb.RateLimit(requests=_NEVER_REACHED, window=window))),
            metadata=admin, timeout=_TIMEOUT_S)
        meta = {"team": "bench", "tier": "gold"}
        hit = stub.CreateKey(pb.CreateKeyRequest(
            owner_id="bench-owner", name="bench hit", scopes=["orders:read", "orders:write"],
            metadata=meta), metadata=admin, timeout=_TIMEOUT_S).secret
        limited = stub.CreateKey(pb.CreateKeyRequest(
            owner_id="bench-owner", name="bench limited", policy_id="bench-limited", metadata=meta),
            metadata=admin, timeout=_TIMEOUT_S).secret
        answer = stub.Validate(pb.ValidateRequest(key=hit), timeout=_TIMEOUT_S)
        if _code_name(answer.code) != "VALID":
            raise BenchError(f"setup: a fresh key answered {_code_name(answer.code)}")
    except grpc.RpcError as exc:
        raise BenchError(f"setup through the admin API failed: {exc.code().name}: {exc.details()}") from None
    finally:
        setup.stop()
    # Same shape, one checksum character changed: parsed, checksummed, refused.
    last = hit[-1]
    malformed = hit[:-1] + ("A" if last != "A" else "B")
    return Fixture(redis.url, secret, hit, limited, malformed, answer.SerializeToString())
