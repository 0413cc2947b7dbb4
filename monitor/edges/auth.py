"""Why a secured Kafka connection failed, in one line a user can act on. aiokafka reports every failed
bootstrap as "Unable to bootstrap"; when TLS or SASL is configured, `explain_refusal` connects once more to
the first bootstrap address and names the cause: an untrusted broker certificate, a client certificate the
broker refused (or none given), or SASL credentials it rejected. A refusal is not recoverable by retrying.
The messages name the settings to fix and never hold a secret.

Part of the Kafka edge (monitor.edges.kafka calls it); the only other module that touches aiokafka."""

from __future__ import annotations

import asyncio
import ssl
import struct

from aiokafka.conn import create_conn
from aiokafka.errors import KafkaError, SaslAuthenticationFailed, UnsupportedSaslMechanismError

from monitor.settings import KafkaSettings

# An ApiVersions v0 request: under TLS 1.3 the broker judges the client certificate after the handshake,
# so its verdict arrives with the first answer.
_CLIENT = b"qta-monitor"
_BODY = struct.pack(">hhih", 18, 0, 1, len(_CLIENT)) + _CLIENT
_API_VERSIONS = struct.pack(">i", len(_BODY)) + _BODY


def _first_address(bootstrap: str) -> tuple[str, int]:
    host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
    return host.strip("[]"), int(port)


async def _tls_refusal(kafka: KafkaSettings, context: ssl.SSLContext, timeout_s: float) -> str | None:
    host, port = _first_address(kafka.bootstrap)
    where = f"Kafka at {kafka.bootstrap}"
    client_cert = f"kafka.tls_cert ({kafka.tls_cert})" if kafka.tls_cert else "no client certificate"
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port, ssl=context)
    except ssl.SSLCertVerificationError as exc:
        ca = kafka.tls_ca or "the system CAs"
        return (
            f"{where}: the broker's TLS certificate is not trusted ({exc.verify_message}); kafka.tls_ca "
            f"({ca}) must hold the CA that signed it"
        )
    except ssl.SSLError as exc:
        return f"{where}: the TLS handshake failed ({exc.reason}) with {client_cert}"
    except (OSError, TimeoutError):
        return None  # not a TLS matter: nothing answers there
    try:
        async with asyncio.timeout(timeout_s):
            writer.write(_API_VERSIONS)
            await writer.drain()
            await reader.readexactly(4)
    except ssl.SSLError as exc:
        if kafka.tls_cert is None:
            return (
                f"{where}: the broker requires a client certificate ({exc.reason}) and none was given; set "
                "kafka.tls_cert and kafka.tls_key to one signed by a CA the broker trusts"
            )
        return (
            f"{where}: the broker rejected kafka.tls_cert ({kafka.tls_cert}) ({exc.reason}); it needs a "
            "certificate signed by a CA it trusts"
        )
    except (OSError, asyncio.IncompleteReadError) as exc:
        if kafka.security_protocol == "SSL":
            return (
                f"{where}: the broker closed the TLS connection after the handshake "
                f"({type(exc).__name__}): it requires a client certificate it trusts and got {client_cert}"
            )
        return None
    except TimeoutError:
        return None
    finally:
        writer.close()
    return None


async def explain_refusal(kafka: KafkaSettings, kwargs: dict[str, object]) -> str | None:
    """The reason a TLS / SASL connection with these client arguments is refused, or None when the failure
    is something else (nothing listening, a plaintext connection)."""
    if kafka.security_protocol == "PLAINTEXT":
        return None
    timeout_s = min(kafka.request_timeout_s, 10.0)
    context = kwargs.get("ssl_context")
    if isinstance(context, ssl.SSLContext):
        reason = await _tls_refusal(kafka, context, timeout_s)
        if reason is not None:
            return reason
    if not kafka.security_protocol.startswith("SASL_"):
        return None
    host, port = _first_address(kafka.bootstrap)
    try:
        async with asyncio.timeout(timeout_s):
            conn = await create_conn(
                host,
                port,
                request_timeout_ms=int(timeout_s * 1000),
                ssl_context=context,
                security_protocol=kafka.security_protocol,
                sasl_mechanism=kwargs.get("sasl_mechanism"),
                sasl_plain_username=kwargs.get("sasl_plain_username"),
                sasl_plain_password=kwargs.get("sasl_plain_password"),
            )
    except (SaslAuthenticationFailed, UnsupportedSaslMechanismError) as exc:
        detail = getattr(exc, "description", "") or type(exc).__name__
        return (
            f"Kafka at {kafka.bootstrap}: SASL authentication as {kafka.sasl_username!r} with "
            f"{kafka.sasl_mechanism} failed ({detail}); check kafka.sasl_username and kafka.sasl_password"
        )
    except (KafkaError, OSError, TimeoutError):
        return None
    conn.close()
    return None
