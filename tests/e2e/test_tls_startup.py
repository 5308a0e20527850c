"""Bad TLS settings stop `keysvc serve` with one line naming the setting, exit 2 (real processes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e._tls import make_pki
from tests.e2e.test_startup_errors import assert_one_line, serve

pytestmark = pytest.mark.e2e


def test_a_missing_certificate_file_names_the_setting(tmp_path: Path, sqlite_url: str) -> None:
    pki = make_pki(tmp_path)
    line = assert_one_line(serve("--store", sqlite_url, "--tls-cert", str(tmp_path / "absent.pem"),
                                 "--tls-key", str(pki.key_file)), "KEYSVC_TLS_CERT")
    assert "absent.pem" in line


def test_a_key_of_another_certificate_names_the_key(tmp_path: Path, sqlite_url: str) -> None:
    pki, other = make_pki(tmp_path), make_pki(tmp_path, "other")
    line = assert_one_line(serve("--store", sqlite_url, "--tls-cert", str(pki.cert_file),
                                 "--tls-key", str(other.key_file)), "KEYSVC_TLS_KEY")
    assert "BEGIN" not in line  # never the key's contents


def test_a_file_without_a_certificate_names_the_certificate(tmp_path: Path, sqlite_url: str) -> None:
    pki = make_pki(tmp_path)
    assert_one_line(serve("--store", sqlite_url, "--tls-cert", str(pki.key_file), "--tls-key",
                          str(pki.key_file)), "KEYSVC_TLS_CERT")


def test_an_unusable_client_ca_names_it(tmp_path: Path, sqlite_url: str) -> None:
    pki = make_pki(tmp_path)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    assert_one_line(serve("--store", sqlite_url, "--tls-cert", str(pki.cert_file), "--tls-key",
                          str(pki.key_file), "--tls-client-ca", str(junk)), "KEYSVC_TLS_CLIENT_CA")


@pytest.mark.parametrize(("flags", "named"), [
    (("--tls-cert", "x.pem"), "KEYSVC_TLS_KEY"),
    (("--tls-key", "x.key"), "KEYSVC_TLS_CERT"),
    (("--tls-client-ca", "ca.pem"), "KEYSVC_TLS_CLIENT_CA"),
])
def test_tls_settings_go_together(sqlite_url: str, flags: tuple[str, ...], named: str) -> None:
    assert_one_line(serve("--store", sqlite_url, *flags), named)


@pytest.mark.parametrize("parameter", ["ssl_ca_certs", "ssl_certfile", "ssl_keyfile"])
def test_a_rediss_url_naming_a_missing_file_names_the_parameter(tmp_path: Path, parameter: str) -> None:
    pki = make_pki(tmp_path)
    files = {"ssl_ca_certs": pki.ca_file, "ssl_certfile": pki.client_cert_file, "ssl_keyfile": pki.client_key_file}
    files[parameter] = tmp_path / "absent.pem"
    query = "&".join(f"{name}={path}" for name, path in files.items())
    line = assert_one_line(serve("--store", f"rediss://:hunter2@127.0.0.1:1/0?{query}"), "KEYSVC_STORE", parameter)
    assert "hunter2" not in line


def test_a_worker_set_reports_a_bad_tls_file_once(tmp_path: Path, sqlite_url: str) -> None:
    pki, other = make_pki(tmp_path), make_pki(tmp_path, "other")
    assert_one_line(serve("--store", sqlite_url, "--workers", "2", "--tls-cert", str(pki.cert_file),
                          "--tls-key", str(other.key_file)), "KEYSVC_TLS_KEY")
