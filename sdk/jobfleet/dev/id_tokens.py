"""Google-shaped ID tokens signed by a local key, and the key's certificate in the format
of https://www.googleapis.com/oauth2/v1/certs: what the Cloud Scheduler stand-in sends,
and what the API's production verifier (`jobfleet.api.auth.GoogleIdTokens`) checks when
JOBFLEET_API_CERTS_URL points at the stand-in."""

from __future__ import annotations

import datetime
import hashlib
import time
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt, jwt

ISSUER = "https://accounts.google.com"
TOKEN_SECONDS = 3600  # Google's ID tokens live an hour


@dataclass(frozen=True)
class SigningKey:
    private_pem: bytes
    certificate_pem: str


def make_key(common_name: str, days: int = 1) -> SigningKey:
    """A fresh RSA key and a self-signed certificate valid `days` either side of now."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=days))
        .not_valid_after(now + datetime.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    return SigningKey(
        private_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        certificate_pem=certificate.public_bytes(serialization.Encoding.PEM).decode(),
    )


def sign(key: SigningKey, kid: str, claims: dict[str, Any]) -> str:
    """A JWT of `claims`, RS256 with `key`, its header naming `kid`."""
    signer = crypt.RSASigner.from_string(key.private_pem, key_id=kid)  # type: ignore[no-untyped-call]
    encoded: bytes = jwt.encode(signer, claims)  # type: ignore[no-untyped-call]
    return encoded.decode()


def service_account_claims(
    email: str, audience: str, now: float | None = None
) -> dict[str, Any]:
    """The claims of an ID token Google mints for a service account (with its e-mail)."""
    issued = int(time.time() if now is None else now)
    subject = str(int(hashlib.sha256(email.encode()).hexdigest()[:20], 16))
    return {
        "iss": ISSUER,
        "aud": audience,
        "azp": subject,
        "sub": subject,
        "email": email,
        "email_verified": True,
        "iat": issued,
        "exp": issued + TOKEN_SECONDS,
    }


def certificates(kid: str, key: SigningKey) -> dict[str, str]:
    """The v1 certs document: `{kid: PEM certificate}`."""
    return {kid: key.certificate_pem}
