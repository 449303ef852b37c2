"""TLS for MLLP: server and client contexts from PEM files.

There is no MLLP-specific TLS standard; IHE ITI TF-2 "Secure Node" (ATNA) asks for TLS with
mutual authentication, which is what a client CA turns on here.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from gateway.errors import ConfigError


def server_context(cert: Path, key: Path | None = None, client_ca: Path | None = None) -> ssl.SSLContext:
    """TLS 1.2+ server context; with ``client_ca``, clients must present a certificate it signed."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert), str(key) if key else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"HL7GW_MLLP_TLS_CERT/HL7GW_MLLP_TLS_KEY ({cert}, {key}): {exc}") from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=str(client_ca))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"HL7GW_MLLP_TLS_CLIENT_CA ({client_ca}): {exc}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(
    ca: Path | None = None, cert: Path | None = None, key: Path | None = None, *, verify: bool = True
) -> ssl.SSLContext:
    """TLS client context: trust ``ca`` (else the system store), present ``cert`` when given."""
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca) if ca else None)
        if cert is not None:
            context.load_cert_chain(str(cert), str(key) if key else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"TLS files ({ca or 'system CAs'}, {cert}, {key}): {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
