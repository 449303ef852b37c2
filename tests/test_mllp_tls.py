"""MLLP over TLS and mutual TLS, with a CA and certificates made by the test (trustme)."""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from pathlib import Path

import pytest
import trustme

from gateway.errors import ConfigError
from gateway.mllp.client import send_messages
from gateway.mllp.limits import Limits
from gateway.mllp.tls import client_context, server_context
from tests.support.mllp import RawClient, adt, listening
from tests.support.queue import queued


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Files: server cert+key, the CA that signed it and client certs, a client cert, and a stranger's."""
    folder = tmp_path_factory.mktemp("pki")
    ca, other_ca = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("lab-system.example")
    stranger = other_ca.issue_cert("stranger.example")
    files = {
        "ca": ca.cert_pem,
        "server_cert": server.cert_chain_pems[0],
        "server_key": server.private_key_pem,
        "client": client.private_key_and_cert_chain_pem,
        "stranger": stranger.private_key_and_cert_chain_pem,
    }
    paths = {}
    for name, blob in files.items():
        paths[name] = folder / f"{name}.pem"
        blob.write_to_path(str(paths[name]))
    return paths


def test_tls(pki: dict[str, Path], redis_url: str, redis_namespace: str) -> None:
    server_tls = server_context(pki["server_cert"], pki["server_key"])

    async def scenario() -> None:
        async with listening(redis_url, redis_namespace, ssl_context=server_tls) as (_, port):
            client = await RawClient.connect(port, client_context(pki["ca"]))
            await client.send_message(adt("TLS-1"))
            assert (await client.read_ack()).get("MSA-1") == "AA"
            await client.close()
            # A client that does not trust the listener's CA refuses it.
            with pytest.raises(ssl.SSLCertVerificationError):
                await RawClient.connect(port, client_context())
            # A plain-TCP client gets nothing accepted.
            plain = await RawClient.connect(port)
            await plain.send_message(adt("PLAIN-1"))
            assert await plain.closed_by_peer()
            await plain.close()

    asyncio.run(scenario())
    assert [e.control_id for e in queued(redis_url, redis_namespace)] == ["TLS-1"]


def test_mutual_tls_refuses_clients_without_a_trusted_certificate(
    pki: dict[str, Path], redis_url: str, redis_namespace: str
) -> None:
    server_tls = server_context(pki["server_cert"], pki["server_key"], client_ca=pki["ca"])

    async def refused(port: int, context: ssl.SSLContext) -> None:
        try:
            client = await RawClient.connect(port, context)
            await client.send_message(adt("NOCERT"))
            assert await client.closed_by_peer()
            assert not client.frames
            await client.close()
        except (ssl.SSLError, ConnectionError):
            pass  # refused during the handshake

    async def scenario() -> None:
        async with listening(redis_url, redis_namespace, ssl_context=server_tls) as (_, port):
            await refused(port, client_context(pki["ca"]))  # no certificate
            await refused(port, client_context(pki["ca"], pki["stranger"]))  # signed by another CA
            client = await RawClient.connect(port, client_context(pki["ca"], pki["client"]))
            await client.send_message(adt("MTLS-1"))
            assert (await client.read_ack()).get("MSA-1") == "AA"
            await client.close()
            results = await send_messages(
                [adt("MTLS-2")], "127.0.0.1", port, ssl_context=client_context(pki["ca"], pki["client"])
            )
            assert [(r.control_id, r.code) for r in results] == [("MTLS-2", "AA")]

    asyncio.run(scenario())
    assert [e.control_id for e in queued(redis_url, redis_namespace)] == ["MTLS-1", "MTLS-2"]


def test_addresses_are_judged_before_the_handshake_and_a_handshake_counts(
    pki: dict[str, Path], redis_url: str, redis_namespace: str
) -> None:
    """A refused address is closed without a handshake (it costs the listener no TLS work), and a
    connection still in its handshake holds its place against the per-peer limit (a flood of
    silent sockets cannot get round it)."""
    server_tls = server_context(pki["server_cert"], pki["server_key"])
    allowed = (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("127.0.0.3/32"))
    limits = Limits(allowed_peers=allowed, max_connections_per_peer=1, frame_timeout_s=30)

    async def scenario() -> None:
        async with listening(redis_url, redis_namespace, ssl_context=server_tls, limits=limits) as (server, port):
            stranger = await RawClient.connect(port, source="127.0.0.2")  # plain TCP: no ClientHello sent
            assert await stranger.closed_by_peer(timeout=2)  # before: waited for a handshake (30 s)
            await stranger.close()
            silent = await RawClient.connect(port)  # 127.0.0.1, starts no handshake: holds its place
            await asyncio.sleep(0.1)
            with pytest.raises((ssl.SSLError, ConnectionError)):
                second = await RawClient.connect(port, client_context(pki["ca"]))
                await second.send_message(adt("SECOND"))
                await second.read_ack(timeout=2)
            friend = await RawClient.connect(port, client_context(pki["ca"]), source="127.0.0.3")
            await friend.send_message(adt("FRIEND-1"))
            assert (await friend.read_ack()).get("MSA-1") == "AA"
            await friend.close()
            await silent.close()
            assert server.stats.refused_connections == 2

    asyncio.run(scenario())
    assert [e.control_id for e in queued(redis_url, redis_namespace)] == ["FRIEND-1"]


def test_bad_tls_files_are_configuration_errors(pki: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="HL7GW_MLLP_TLS_CERT"):
        server_context(tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match="HL7GW_MLLP_TLS_CLIENT_CA"):
        server_context(pki["server_cert"], pki["server_key"], client_ca=tmp_path / "missing.pem")
    with pytest.raises(ConfigError):
        client_context(cert=tmp_path / "missing.pem")
