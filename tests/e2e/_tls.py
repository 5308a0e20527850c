"""TLS helpers for end-to-end tests: certificate authorities made by trustme, TLS channels, served serials."""

from __future__ import annotations

import os
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import trustme
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.e2e._servers import ServerProcess

HOSTS = ("127.0.0.1", "localhost", "::1", "keysvc.internal")  # the last: deploy/envoy/envoy-mtls.yaml


@dataclass
class Pki:
    """A CA, a server certificate it signed and a client certificate it signed, as files."""

    ca: trustme.CA
    ca_file: Path
    cert_file: Path
    key_file: Path
    client_cert_file: Path
    client_key_file: Path

    def rotate_server_cert(self) -> int:
        """Issue a new server certificate and swap both files in by rename, as a secret mount does.

        Returns:
            The new certificate's serial.
        """
        issued = self.ca.issue_cert(*HOSTS)
        for data, target in ((issued.private_key_pem.bytes(), self.key_file),
                             (b"".join(p.bytes() for p in issued.cert_chain_pems), self.cert_file)):
            staging = target.with_suffix(".new")
            staging.write_bytes(data)
            os.replace(staging, target)
        return x509.load_pem_x509_certificate(issued.cert_chain_pems[0].bytes()).serial_number


def make_pki(directory: Path, name: str = "pki") -> Pki:
    """Write a fresh CA, server and client certificate under `directory/name`."""
    folder = directory / name
    folder.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server = ca.issue_cert(*HOSTS)
    client = ca.issue_cert("keysvc-client@test.invalid")
    pki = Pki(ca, folder / "ca.pem", folder / "server.pem", folder / "server.key",
              folder / "client.pem", folder / "client.key")
    ca.cert_pem.write_to_path(str(pki.ca_file))
    server.private_key_pem.write_to_path(str(pki.key_file))
    pki.cert_file.write_bytes(b"".join(p.bytes() for p in server.cert_chain_pems))
    client.private_key_pem.write_to_path(str(pki.client_key_file))
    pki.client_cert_file.write_bytes(b"".join(p.bytes() for p in client.cert_chain_pems))
    return pki


def tls_channel(addr: str, pki: Pki, *, client: Pki | None = None) -> grpc.Channel:
    """A channel trusting `pki`'s CA; with `client`, presenting its client certificate."""
    credentials = grpc.ssl_channel_credentials(
        pki.ca_file.read_bytes(),
        client.client_key_file.read_bytes() if client else None,
        client.client_cert_file.read_bytes() if client else None,
    )
    return grpc.secure_channel(addr, credentials)


def health(channel: grpc.Channel, timeout: float = 5.0) -> int:
    """The overall health status over `channel` (raises grpc.RpcError when the call fails)."""
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""),
                                                    timeout=timeout)
    return int(reply.status)


def wait_serving_tls(server: ServerProcess, pki: Pki, *, client: Pki | None = None,
                     timeout: float = 30.0) -> None:
    """Wait until `server` answers SERVING over TLS (generous: the machine may be loaded)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise AssertionError(f"server exited early ({server.proc.returncode}):\n{server.logs()}")
        with tls_channel(server.addr, pki, client=client) as channel:
            try:
                if health(channel, timeout=2) == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError as exc:
                last = exc
        time.sleep(0.1)
    raise AssertionError(f"not SERVING over TLS within {timeout}s ({last}):\n{server.logs()}")


def served_serial(host: str, port: int, pki: Pki, *, client: Pki | None = None, alpn: str = "h2") -> int:
    """Open one new TLS connection and return the serial of the certificate the server presents."""
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    context.set_alpn_protocols([alpn])
    if client is not None:
        context.load_cert_chain(str(client.client_cert_file), str(client.client_key_file))
    with socket.create_connection((host, port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=host) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def cert_serial(path: Path) -> int:
    """The serial of the first certificate in a PEM file."""
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number
