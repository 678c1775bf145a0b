"""Job signatures: ``x-pushfleet-signature: v1=<lowercase hex of HMAC-SHA256(key, body)>`` over
the exact body bytes, as ``shared/src/signature.rs`` defines them.

The key file is the workers' (``amqp.signing_key_file``): its bytes with one trailing newline
(``\\n`` or ``\\r\\n``) removed, at least 32 bytes. Nothing else is trimmed.
"""

import hashlib
import hmac
import os

from .errors import SigningKeyError

SIGNATURE_HEADER = "x-pushfleet-signature"
MIN_KEY_BYTES = 32


class SigningKey:
    """A job-signing key. Its ``repr`` never shows the key."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise SigningKeyError(
                f"the signing key is {len(key)} bytes; use at least {MIN_KEY_BYTES} random bytes "
                "(e.g. `openssl rand -hex 32 > FILE`)"
            )
        self._key = bytes(key)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> "SigningKey":
        """Reads a key file as the workers do."""
        try:
            with open(path, "rb") as f:
                key = f.read()
        except OSError as e:
            raise SigningKeyError(f"cannot read the signing key file {os.fspath(path)}: {e}") from e
        if key.endswith(b"\r\n"):
            key = key[:-2]
        elif key.endswith(b"\n"):
            key = key[:-1]
        try:
            return cls(key)
        except SigningKeyError as e:
            raise SigningKeyError(f"{os.fspath(path)}: {e}") from None

    def sign(self, body: bytes) -> str:
        """The header value for ``body``."""
        return sign(self._key, body)

    def __repr__(self) -> str:
        return "SigningKey(<redacted>)"


def sign(key: bytes, body: bytes) -> str:
    """``v1=`` and the lowercase hex HMAC-SHA256 of ``body`` under ``key``."""
    return "v1=" + hmac.new(key, body, hashlib.sha256).hexdigest()
