"""Where a client connects: target, TLS material, admin credentials, channel options."""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from keysvc.client.errors import ClientConfigError

__all__ = ["DEFAULT_TARGET", "Connection", "Tls"]

DEFAULT_TARGET = "127.0.0.1:50051"

# Reconnect quickly after a server restart: grpc's default backoff (1 s growing to 120 s)
# would fail every retry fast long after the server is back. (Not min_reconnect_backoff_ms:
# grpc also takes it as the connect timeout, so a slow handshake would fail as UNAVAILABLE.)
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)


@dataclass(frozen=True, slots=True)
class Tls:
    """TLS to the server: trust `ca`; with `cert` and `key`, present a client certificate (mTLS).

    `server_name` overrides the name the server's certificate must carry
    (default: the target's host).
    """

    ca: str | Path
    cert: str | Path = ""
    key: str | Path = ""
    server_name: str = ""

    def credentials(self) -> grpc.ChannelCredentials:
        """Read the files into channel credentials.

        Raises:
            ClientConfigError: a file cannot be read, or `cert` without `key` (or the other way round).
        """
        if bool(self.cert) != bool(self.key):
            raise ClientConfigError("tls: cert and key are given together (a client certificate and its key)")
        ca, key, cert = _read("ca", self.ca), _read("key", self.key), _read("cert", self.cert)
        _check_pem(self, ca)
        return grpc.ssl_channel_credentials(ca, key, cert)


def _check_pem(tls: Tls, ca: bytes | None) -> None:
    """Refuse TLS material gRPC cannot use, naming the field, before any call.

    gRPC takes any bytes and fails only at connect time, as UNAVAILABLE "Failed to
    create security handshaker": a garbage CA, or a certificate and key swapped or
    not a pair, looked like a server outage (and was retried as one). The messages
    never quote the files (a key file holds a secret).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca is not None:
        try:
            context.load_verify_locations(cadata=ca.decode("ascii"))
        except (ssl.SSLError, ValueError):  # UnicodeDecodeError is a ValueError
            raise ClientConfigError(f"tls.ca: {tls.ca} holds no PEM certificate") from None
    if tls.cert:
        try:
            context.load_cert_chain(tls.cert, tls.key, password=b"")
        except (ssl.SSLError, OSError):
            raise ClientConfigError(
                f"tls.cert, tls.key: {tls.cert} and {tls.key} are not a PEM certificate and its "
                "unencrypted private key") from None


def _read(name: str, path: str | Path) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ClientConfigError(f"tls.{name}: cannot read {path}: {exc.strerror}") from None


@dataclass(frozen=True, slots=True)
class Connection:
    """A target, its TLS (None: plaintext) and the admin key sent as `authorization: Bearer`."""

    target: str = DEFAULT_TARGET
    tls: Tls | None = None
    admin_key: str = field(default="", repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Connection:
        """From the environment, as the CLI reads it.

        KEYSVC_ADDR, KEYSVC_ADMIN_KEY, KEYSVC_TLS_CA, KEYSVC_TLS_CLIENT_CERT,
        KEYSVC_TLS_CLIENT_KEY and KEYSVC_TLS_SERVER_NAME.
        """
        env = os.environ if env is None else env
        ca = env.get("KEYSVC_TLS_CA", "")
        cert, key = env.get("KEYSVC_TLS_CLIENT_CERT", ""), env.get("KEYSVC_TLS_CLIENT_KEY", "")
        return cls.of(env.get("KEYSVC_ADDR", "") or DEFAULT_TARGET, ca=ca, cert=cert, key=key,
                      server_name=env.get("KEYSVC_TLS_SERVER_NAME", ""),
                      admin_key=env.get("KEYSVC_ADMIN_KEY", ""))

    @classmethod
    def of(cls, target: str, *, ca: str | Path = "", cert: str | Path = "", key: str | Path = "",
           server_name: str = "", admin_key: str = "") -> Connection:
        """A connection from flat options: TLS when `ca` is given.

        Raises:
            ClientConfigError: a client certificate or server name without `ca`.
        """
        if not ca:
            if cert or key or server_name:
                raise ClientConfigError("tls: a client certificate or server name needs a CA (tls.ca)")
            return cls(target, None, admin_key)
        return cls(target, Tls(ca, cert, key, server_name), admin_key)

    def options(self) -> list[tuple[str, str | int]]:
        """The channel options (the server name override among them)."""
        options: list[tuple[str, str | int]] = list(CHANNEL_OPTIONS)
        if self.tls is not None and self.tls.server_name:
            options += [("grpc.ssl_target_name_override", self.tls.server_name),
                        ("grpc.default_authority", self.tls.server_name)]
        return options

    def metadata(self, admin: bool) -> tuple[tuple[str, str], ...] | None:
        """The call metadata: the admin key for an admin call.

        Raises:
            ClientConfigError: an admin call without an admin key.
        """
        if not admin:
            return None
        if not self.admin_key:
            raise ClientConfigError("admin_key: admin calls need an admin key (KEYSVC_ADMIN_KEY)")
        if grpc_traces_calls(os.environ.get("GRPC_TRACE", ""), os.environ.get("GRPC_VERBOSITY", "")):
            raise ClientConfigError(
                "GRPC_TRACE: gRPC's tracers print each call's metadata, the admin key among it, "
                "outside Python's logging; unset GRPC_TRACE (or disable its tracers) for admin calls")
        return (("authorization", f"Bearer {self.admin_key}"),)


def grpc_traces_calls(trace: str, verbosity: str) -> bool:
    """True when `trace` (GRPC_TRACE) turns on a gRPC tracer that `verbosity` (GRPC_VERBOSITY) prints.

    The C core reads both outside Python and its tracers (`api`, `all`, `http`, `tcp`, ...)
    print call metadata or the bytes on the wire to stderr, where no redaction reaches,
    so an admin key is never sent while one prints (also with GRPC_VERBOSITY unset).
    Entries starting with `-` only turn tracers off; NONE and ERROR print no trace lines.
    """
    if verbosity.strip().upper() in ("NONE", "ERROR"):
        return False
    return any(name.strip() and not name.strip().startswith("-") and name.strip().lower() != "none"
               for name in trace.split(","))
