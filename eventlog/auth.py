"""Access control: signed tokens (JWT) that grant publish and subscribe rights per stream.

No HTTP here (``http_auth.py`` finds the token in a request); this module verifies a token
with PyJWT, reads its rights and answers whether they cover a request.

A token's rights are its ``eventlog`` claim::

    {"eventlog": {"publish": ["orders"], "subscribe": ["user.42.*", "broadcast"]}}

Each entry is a stream pattern (``events.matches``, the one definition readers share): an
exact stream name, a literal prefix followed by ``*`` (``user.42.*`` matches ``user.42.inbox``
and ``user.42.inbox.archive``: one or more characters after ``user.42.``, so never
``user.420.inbox``), or ``*`` for every stream. ``subscribe`` covers live streams and audit
queries, which may name patterns too: a granted pattern must cover the requested one (the
same ``matches`` decides); all streams at once (no ``stream`` given) needs ``*``.

The accepted algorithms are pinned by the kind of key, never taken from the token: HS256
with a shared secret; with a public key only what that key type signs (RS256 for RSA,
ES256 for P-256, EdDSA for Ed25519/Ed448). So no ``none``, and no token whose header says
HS256 is checked against a public key's text as if it were a secret. Every token must
carry ``exp``: an open stream ends then.

PyJWT and cryptography (some 9 MB) are imported by the methods that use them: without a key,
no process of the server loads them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Settings, key_of
from .errors import ConfigError, Forbidden, InvalidRequest, Unauthorized
from .events import EVERY_STREAM, PATTERN, is_prefix, matches

CLAIM = "eventlog"
MAX_PATTERNS = 1000  # per right: a claim is read on every request, keep it small


@dataclass(frozen=True, slots=True)
class Rights:
    """What a verified token allows, until ``expires_at`` (seconds since the epoch; None:
    no end, as for every request when access control is off)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    expires_at: float | None

    def require_publish(self, stream: str) -> None:
        """Raise Forbidden unless the token may publish to ``stream``."""
        if not any(matches(p, stream) for p in self.publish):
            raise Forbidden(f"this token may not publish to stream {stream!r}", stream=stream)

    def require_subscribe(self, streams: Sequence[str]) -> None:
        """Raise Forbidden unless the token may read every one of ``streams`` (names or
        patterns; empty: all).

        A pattern needs one granted pattern that covers every stream it can match: with
        ``user.42.*`` granted, ``user.42.*`` and ``user.42.orders.*`` may be read, ``user.*``
        may not, even where no stream outside ``user.42.`` exists yet.
        """
        if not streams:
            if EVERY_STREAM not in self.subscribe:
                raise Forbidden(
                    "reading every stream needs a token that may subscribe to '*'; name the"
                    " streams with ?stream=",
                    stream=EVERY_STREAM,
                )
            return
        for stream in streams:
            if not any(matches(p, stream) for p in self.subscribe):
                what = "every stream of the pattern" if is_prefix(stream) else "stream"
                raise Forbidden(f"this token may not read {what} {stream!r}", stream=stream)


class TokenAuth:
    """Verifies tokens with the one configured key; mints them too when that is a secret."""

    def __init__(
        self, key: Any, algorithms: list[str], *, audience: str = "", issuer: str = ""
    ) -> None:
        self._key = key
        self._algorithms = algorithms
        self._audience = audience or None
        self._issuer = issuer or None

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenAuth | None:
        """The verifier the settings ask for, or None when no key is set (access is open).

        The public key file is read here, once, so a missing or unusable one stops the
        process at start with the setting's name.
        """
        secret, public_key = settings.jwt_secret, settings.jwt_public_key
        options = {"audience": settings.jwt_audience, "issuer": settings.jwt_issuer}
        if secret and public_key:
            raise ConfigError(
                f"set one of {key_of('jwt_secret')} and {key_of('jwt_public_key')}, not both"
            )
        if secret:
            return cls(secret, ["HS256"], **options)
        if public_key:
            key = _load_public_key(public_key)
            return cls(key, _algorithms_of(key), **options)
        return None

    @property
    def can_mint(self) -> bool:
        """Whether this key can sign tokens (a shared secret can, a public key cannot)."""
        return self._algorithms == ["HS256"]

    def verify(self, token: str) -> Rights:
        """The rights of a valid token; Unauthorized for anything else."""
        import jwt

        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=self._algorithms,
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["exp"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("the token is not valid yet") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized("the token is not meant for this service (aud)") from None
        except jwt.InvalidIssuerError:
            raise Unauthorized("the token is from an unknown issuer (iss)") from None
        except jwt.InvalidTokenError:
            # Bad signature, wrong algorithm, malformed: one answer, no detail to probe with.
            raise Unauthorized("the token is invalid") from None
        return Rights(*_rights(claims.get(CLAIM)), expires_at=float(claims["exp"]))

    def mint(
        self,
        *,
        publish: Iterable[str] = (),
        subscribe: Iterable[str] = (),
        ttl: float,
        subject: str | None = None,
    ) -> str:
        """A token granting ``publish`` and ``subscribe`` for ``ttl`` seconds."""
        import jwt

        if not self.can_mint:
            raise ConfigError(
                f"{key_of('jwt_public_key')} can only verify tokens; mint them where the"
                f" private key is, or use {key_of('jwt_secret')}"
            )
        if ttl <= 0:
            raise ConfigError("a token's lifetime must be positive")
        rights = {"publish": list(publish), "subscribe": list(subscribe)}
        try:
            _rights(rights)  # refuse to sign a claim that verify() would refuse
        except Unauthorized as error:
            raise InvalidRequest(error.detail) from None
        now = int(time.time())
        claims: dict[str, Any] = {CLAIM: rights, "iat": now, "exp": now + max(1, round(ttl))}
        if subject is not None:
            claims["sub"] = subject
        if self._audience:
            claims["aud"] = self._audience
        if self._issuer:
            claims["iss"] = self._issuer
        return jwt.encode(claims, self._key, algorithm="HS256")


def _rights(claim: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The (publish, subscribe) patterns of an ``eventlog`` claim; Unauthorized if malformed."""
    if not isinstance(claim, dict):
        raise Unauthorized(f"the token has no {CLAIM!r} claim object")
    unknown = set(claim) - {"publish", "subscribe"}
    if unknown:
        raise Unauthorized(f"the {CLAIM!r} claim has unknown keys: {sorted(unknown)[:5]}")
    rights = []
    for name in ("publish", "subscribe"):
        patterns = claim.get(name, [])
        if not isinstance(patterns, list) or len(patterns) > MAX_PATTERNS:
            raise Unauthorized(f"{CLAIM}.{name} must be a list of at most {MAX_PATTERNS} patterns")
        for pattern in patterns:
            if not isinstance(pattern, str) or not PATTERN.fullmatch(pattern):
                raise Unauthorized(
                    f"{CLAIM}.{name} holds a malformed pattern: use a stream name, a prefix"
                    " ending in '*', or '*'"
                )
        rights.append(tuple(patterns))
    return rights[0], rights[1]


def _load_public_key(path: str) -> Any:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    setting = key_of("jwt_public_key")
    try:
        pem = Path(path).read_bytes()
    except OSError as error:
        raise ConfigError(f"{setting}: cannot read {path!r}: {error.strerror}") from None
    try:
        return load_pem_public_key(pem)
    except (ValueError, TypeError):
        raise ConfigError(f"{setting}: {path!r} is not a PEM public key") from None


def _algorithms_of(key: Any) -> list[str]:
    """The one algorithm a public key of this type verifies."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    if isinstance(key, rsa.RSAPublicKey):
        return ["RS256"]
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return ["ES256"]
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return ["EdDSA"]
    raise ConfigError(
        f"{key_of('jwt_public_key')}: use an RSA, P-256 or Ed25519/Ed448 public key"
    )
