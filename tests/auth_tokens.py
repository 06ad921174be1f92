"""Keys and tokens for the access-control tests: good ones, and every kind of bad one."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

SECRET = "s3cret-" + "k" * 32  # at least 32 bytes, as the settings demand
OTHER_SECRET = "other-" + "x" * 32
AUDIENCE = "eventlog-test"


def claims(
    publish: list[str] | None = None,
    subscribe: list[str] | None = None,
    *,
    ttl: float = 300,
    **extra: Any,
) -> dict[str, Any]:
    """Claims with the given rights, valid for ``ttl`` seconds, for AUDIENCE."""
    now = time.time()
    body: dict[str, Any] = {
        "eventlog": {"publish": publish or [], "subscribe": subscribe or []},
        "iat": int(now),
        "exp": int(now + ttl),
        "aud": AUDIENCE,
    }
    body.update(extra)
    return body


def hs256(body: dict[str, Any], secret: str = SECRET) -> str:
    return jwt.encode(body, secret, algorithm="HS256")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(body: dict[str, Any], alg: str, key: bytes = b"") -> str:
    """A token built by hand, as an attacker would: ``alg`` none (no signature), or HS256
    with ``key`` as the HMAC secret (PyJWT itself refuses to sign with a PEM key)."""
    head = _b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    payload = _b64(json.dumps(body).encode())
    signing_input = f"{head}.{payload}".encode()
    if alg == "none":
        return f"{head}.{payload}."
    signature = hmac.new(key, signing_input, hashlib.sha256).digest()
    return f"{head}.{payload}.{_b64(signature)}"


class KeyPair:
    """A private key that signs, and its public key as a PEM file the server reads."""

    def __init__(self, kind: str, directory: Path) -> None:
        if kind == "rsa":
            self.private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self.algorithm = "RS256"
        elif kind == "ec":
            self.private = ec.generate_private_key(ec.SECP256R1())
            self.algorithm = "ES256"
        else:
            self.private = ed25519.Ed25519PrivateKey.generate()
            self.algorithm = "EdDSA"
        self.public_pem = self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.path = directory / f"{kind}.pem"
        self.path.write_bytes(self.public_pem)

    def sign(self, body: dict[str, Any], algorithm: str | None = None) -> str:
        return jwt.encode(body, self.private, algorithm=algorithm or self.algorithm)
