"""A callback over https goes to the address checked at send time, yet TLS still checks the
certificate against the URL's host name (SNI and verification use the name, not the
pinned IP): a certificate for another name is refused."""

from __future__ import annotations

import ipaddress
import ssl
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from notifier.adapter import TemporaryFailure
from notifier.callback_http import Address, DestinationPolicy, HostClients, post_callback
from notifier.webhooks import new_secret, signed_headers
from tests.support import wait_until


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _certificates(directory: Path, host: str) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate for ``host`` signed by it: (ca, cert, key) files."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("test CA"))
        .issuer_name(_name("test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(host))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = (directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


class _Seen:
    def __init__(self) -> None:
        self.hosts: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.hosts.append(dict(scope["headers"]).get(b"host", b"").decode())
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[_Seen, int, Path]]:
    ca, cert, key = _certificates(tmp_path, "hooks.mot-cua.test")
    app = _Seen()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_config=None,
        lifespan="off",
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=10)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield app, port, ca
    server.should_exit = True
    thread.join(timeout=10)


def _loopback(host: str, port: int) -> list[Address]:
    return [ipaddress.ip_address("127.0.0.1")]


def test_https_to_the_pinned_address_verifies_the_certificate_of_the_host_name(
    tls_server: tuple[_Seen, int, Path],
) -> None:
    seen, port, ca = tls_server
    policy = DestinationPolicy.of(["127.0.0.1/32"], allow_http=False, resolver=_loopback)
    secret = new_secret()
    body = '{"id": "s-1"}'
    headers = signed_headers("s-1", int(time.time()), body, [secret])
    trusted = ssl.create_default_context(cafile=str(ca))
    # The sender's clients: a connection verified for one name never carries another's.
    with HostClients(verify=trusted) as client:
        answer = post_callback(
            client, policy, f"https://hooks.mot-cua.test:{port}/h", body.encode(), headers
        )
        assert answer.status_code == 204
        assert seen.hosts == [f"hooks.mot-cua.test:{port}"]
        # The same server, the same pinned address, but a URL naming another host: its
        # certificate does not match, so nothing is sent.
        with pytest.raises(TemporaryFailure) as failure:
            post_callback(
                client, policy, f"https://other.mot-cua.test:{port}/h", body.encode(), headers
            )
    assert failure.value.code == "connect-failed"
    assert seen.hosts == [f"hooks.mot-cua.test:{port}"]
