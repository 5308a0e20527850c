"""TLS for keysvc's listeners: certificate files, checked at start-up and re-read when they change.

One `TlsFiles` object per process holds the PEM bytes of the server
certificate chain, its private key and (for mTLS) the CA that client
certificates must chain to. Both servers read it:

- gRPC (`grpc_credentials`): `grpc.dynamic_ssl_server_credentials`, whose
  fetcher gRPC calls before each new handshake; the fetcher stats the files
  and hands gRPC a new configuration when they changed.
- HTTP (granian): reads the files when its server starts; `watch` calls
  the listener's `reload` when they changed, which starts a new server on
  the same port and drains the old. New connections get the new
  certificate and client CA; open ones keep theirs.

A file that changes into something unusable (half written, a key not
matching its certificate) is logged and the last good pair keeps serving.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
import structlog

from keysvc.app.settings import Settings, env_name
from keysvc.core.errors import ConfigError

__all__ = ["TlsFiles", "check_pair", "client_channel", "from_settings", "watch"]

log = structlog.get_logger("keysvc.tls")

_Stamp = tuple[tuple[int, int, int], ...]


@dataclass(frozen=True, slots=True)
class _Pem:
    """One consistent, checked set of PEM bytes."""

    cert: bytes
    key: bytes
    client_ca: bytes | None


def _stamp(paths: tuple[str, ...]) -> _Stamp:
    """What identifies the files' contents cheaply: inode, size, mtime (a rename or rewrite changes it)."""
    stats = [os.stat(path) for path in paths]
    return tuple((st.st_ino, st.st_size, st.st_mtime_ns) for st in stats)


def check_pair(cert: str, key: str, client_ca: str | None) -> None:
    """Load the files into a throw-away context, as the servers would.

    Raises:
        ConfigError: naming the setting whose file is missing or unusable (never its contents).
    """
    for name, path in (("tls_cert", cert), ("tls_key", key), ("tls_client_ca", client_ca)):
        if path is not None and not os.path.isfile(path):
            raise ConfigError(f"{env_name(name)}: {path} is not a readable file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError:
        with open(cert, "rb") as f:
            has_cert = b"-----BEGIN CERTIFICATE-----" in f.read()
        if not has_cert:
            raise ConfigError(f"{env_name('tls_cert')}: {cert} holds no PEM certificate") from None
        raise ConfigError(f"{env_name('tls_key')}: {key} is not the private key of the certificate in "
                          f"{env_name('tls_cert')}") from None
    except OSError as exc:
        raise ConfigError(f"{env_name('tls_cert')}/{env_name('tls_key')}: cannot read the files: "
                          f"{exc.strerror}") from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=client_ca)
        except (ssl.SSLError, OSError):
            raise ConfigError(f"{env_name('tls_client_ca')}: {client_ca} holds no PEM CA certificate"
                              ) from None


class TlsFiles:
    """The server's certificate, key and client CA, re-read when the files change.

    Thread-safe: gRPC calls `changed_since` from its own threads, the event
    loop calls it for the HTTP context; one lock guards the current set.

    Args:
        cert: PEM file of the certificate chain (leaf first).
        key: PEM file of its private key.
        client_ca: PEM file of the CA client certificates must chain to; None: no client certificates.

    Raises:
        ConfigError: a file is missing, unreadable, or the key does not match the certificate.
    """

    def __init__(self, cert: str, key: str, client_ca: str | None = None) -> None:
        self.cert_path, self.key_path, self.client_ca_path = cert, key, client_ca
        self._paths = tuple(p for p in (cert, key, client_ca) if p is not None)
        self._lock = threading.Lock()
        check_pair(cert, key, client_ca)
        self._stamp = _stamp(self._paths)
        self._pem = self._read()
        self._generation = 0  # counts successful reloads
        self._refused: _Stamp | None = None  # the last unusable stamp, logged once

    @property
    def mutual(self) -> bool:
        """Whether clients must present a certificate."""
        return self.client_ca_path is not None

    def _read(self) -> _Pem:
        def read(path: str) -> bytes:
            with open(path, "rb") as f:
                return f.read()
        ca = read(self.client_ca_path) if self.client_ca_path is not None else None
        return _Pem(read(self.cert_path), read(self.key_path), ca)

    def refresh(self) -> int:
        """Re-read the files if they changed and are usable; return the generation now serving.

        Unchanged files cost three stat calls (gRPC calls this before every
        handshake); changed ones are read and checked once, under the lock.
        """
        with self._lock:
            try:
                stamp = _stamp(self._paths)
            except OSError:
                return self._generation  # mid-rotation (a file briefly absent): keep serving
            if stamp in (self._stamp, self._refused):
                return self._generation
            try:
                check_pair(self.cert_path, self.key_path, self.client_ca_path)
                pem = self._read()
                if _stamp(self._paths) != stamp:  # changed while we read: take it next time
                    return self._generation
            except (ConfigError, OSError) as exc:
                self._refused = stamp
                log.warning("TLS files changed but cannot be used; still serving the previous ones",
                            reason=str(exc))
                return self._generation
            self._stamp, self._pem, self._refused = stamp, pem, None
            self._generation += 1
            log.info("TLS certificate reloaded", cert=self.cert_path, generation=self._generation)
            return self._generation

    def current(self) -> tuple[int, _Pem]:
        """The generation and PEM bytes serving now."""
        with self._lock:
            return self._generation, self._pem

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """Server credentials for gRPC that pick up changed files at the next handshake."""
        def configuration(pem: _Pem) -> grpc.ServerCertificateConfiguration:
            return grpc.ssl_server_certificate_configuration([(pem.key, pem.cert)], pem.client_ca)

        served = [self.current()[0]]  # the generation this server's gRPC holds, under `lock`
        lock = threading.Lock()  # the fetcher may be called from several of gRPC's threads

        def fetch() -> grpc.ServerCertificateConfiguration:
            self.refresh()
            generation, pem = self.current()
            with lock:
                if generation == served[0]:
                    # None means "no change" to gRPC (grpc-stubs types the fetcher without it).
                    return None  # type: ignore[return-value]
                served[0] = generation
            return configuration(pem)

        return grpc.dynamic_ssl_server_credentials(
            configuration(self._pem), fetch, require_client_authentication=self.mutual
        )


async def watch(files: TlsFiles, reload: Callable[[], Awaitable[None]], interval_s: float = 1.0) -> None:
    """Call `reload` (the HTTP listener's) whenever the files change into a usable set (run on the loop)."""
    loaded = files.current()[0]
    while True:
        await asyncio.sleep(interval_s)
        generation = files.refresh()
        if generation == loaded:
            continue
        try:
            await reload()
        except OSError as exc:  # the previous server keeps serving; the next change is tried again
            log.warning("could not reload the HTTP listener's certificate", reason=str(exc))
            continue
        loaded = generation


def from_settings(settings: Settings) -> TlsFiles | None:
    """The TLS files the settings name, checked; None when TLS is off.

    Raises:
        ConfigError: one of the three settings names a missing or unusable file.
    """
    if not settings.tls_cert:
        return None
    return TlsFiles(settings.tls_cert, settings.tls_key, settings.tls_client_ca or None)


def client_channel(target: str, *, ca: str = "", cert: str = "", key: str = "") -> grpc.Channel:
    """A gRPC channel to `target`: TLS when `ca` is given (with a client certificate when `cert` is).

    Args:
        target: host:port or unix:/path.
        ca: PEM file of the CA the server's certificate must chain to; empty: plaintext.
        cert: PEM file of the client certificate chain, for a server that requires mTLS.
        key: PEM file of its private key.

    Raises:
        ConfigError: a file cannot be read, or cert/key without the other or without ca.
    """
    if not ca:
        if cert or key:
            raise ConfigError("--tls-client-cert/--tls-client-key need --tls-ca (KEYSVC_TLS_CA)")
        return grpc.insecure_channel(target)
    if bool(cert) != bool(key):
        raise ConfigError("--tls-client-cert and --tls-client-key are given together")

    def read(flag: str, path: str) -> bytes | None:
        if not path:
            return None
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as exc:
            raise ConfigError(f"{flag}: cannot read {path}: {exc.strerror}") from None

    credentials = grpc.ssl_channel_credentials(
        read("--tls-ca", ca), read("--tls-client-key", key), read("--tls-client-cert", cert)
    )
    return grpc.secure_channel(target, credentials)


_STORE_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


def check_store_files(store: str) -> None:
    """Refuse a rediss:// URL whose CA or client certificate parameters name no readable file.

    redis-py reads them at the first connection, where a typo would look like
    a store that is down; here it stops the start, naming the parameter.

    Raises:
        ConfigError: naming KEYSVC_STORE and the parameter (never the URL: it may hold a password).
    """
    from urllib.parse import parse_qs, urlsplit

    if not store.startswith("rediss://"):
        return
    query = parse_qs(urlsplit(store).query)
    for name in _STORE_FILES:
        for path in query.get(name, []):
            if not os.path.isfile(path) or not os.access(path, os.R_OK):
                raise ConfigError(f"{env_name('store')}: {name} is not a readable file")
    if bool(query.get("ssl_certfile")) != bool(query.get("ssl_keyfile")):
        raise ConfigError(f"{env_name('store')}: ssl_certfile and ssl_keyfile are given together")
