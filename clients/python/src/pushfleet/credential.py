"""What counts as a credential in a job: a port of ``shared/src/credential.rs``.

A job names a registry of the worker's catalogue and never carries credentials. The rule looks
at the *names* of keys (``password``, ``accessToken``, ``id_rsa``, ``.dockerconfigjson``, ...) and
at the *shapes* of string values (PEM blocks, Docker configs, kubeconfigs, ``Bearer`` values,
base64 ``user:password``, JSON Web Tokens, registry access tokens), anywhere in ``metadata``. The
human description is ``docs/jobs.md``, "No credentials in jobs".

Objects are walked in sorted key order, as the Rust side walks its (sorted) JSON maps, so both
name the same first finding.
"""

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources

from . import _text


class CredentialKind(enum.Enum):
    """What a credential-looking string was recognised as (named in errors, never shown)."""

    PEM_BLOCK = "a PEM block"
    PRIVATE_KEY = "a private key"
    DOCKER_CONFIG = "a Docker config with credentials"
    KUBECONFIG = "a kubeconfig"
    AUTHORIZATION_HEADER = "an HTTP Authorization value"
    BASE64_USER_PASSWORD = "a base64 user:password pair"  # noqa: S105 - a description
    JSON_WEB_TOKEN = "a JSON Web Token"  # noqa: S105 - a description
    ACCESS_TOKEN = "an access token"  # noqa: S105 - a description

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Finding:
    """Where a credential was found: ``kind`` is None for a key named like a credential."""

    path: str
    kind: CredentialKind | None = None


_VOCABULARY = json.loads(
    resources.files("pushfleet").joinpath("schemas", "credential-terms.json").read_bytes()
)
_CREDENTIAL_TERMS = frozenset(_VOCABULARY["terms"])
_LONG_TERM_LEN = 5
_LONGEST_RUN = max(len(t) for t in _CREDENTIAL_TERMS) + 1
_OPENSSH_KEY_BASE64 = "b3BlbnNzaC1rZXktdjE"
_TOKEN_PREFIXES = tuple(_VOCABULARY["token_prefixes"])
_BASE64_MIN_LEN = 8


def _key_words(key: str) -> list[str]:
    """Lowercase words of an ASCII key, split at non-alphanumerics and camelCase humps."""
    words: list[str] = []
    current = ""
    previous_lower = False
    for c in key:
        if not _text.is_ascii_alnum(c):
            if current:
                words.append(current)
                current = ""
            previous_lower = False
            continue
        if _text.is_ascii_upper(c) and previous_lower and current:
            words.append(current)
            current = ""
        previous_lower = _text.is_ascii_lower(c) or _text.is_ascii_digit(c)
        current += c.lower()
    if current:
        words.append(current)
    return words


def _is_long_term(word: str) -> bool:
    return len(word) >= _LONG_TERM_LEN and word in _CREDENTIAL_TERMS


def _is_term(run: str) -> bool:
    return run in _CREDENTIAL_TERMS or (run.endswith("s") and _is_long_term(run[:-1]))


def is_credential_key(key: str) -> bool:
    """Whether a key's name marks it as a credential (any key that is not ASCII does)."""
    if not key.isascii():
        return True
    words = _key_words(key)
    for start in range(len(words)):
        run = ""
        for word in words[start:]:
            run += word
            if len(run) > _LONGEST_RUN:
                break
            if _is_term(run):
                return True
    whole = "".join(words)
    if whole.endswith("s"):
        whole = whole[:-1]
    return any(len(t) >= _LONG_TERM_LEN and whole.endswith(t) for t in _CREDENTIAL_TERMS)


def credential_value(text: str) -> CredentialKind | None:
    """What a string shaped like a credential looks like, whatever key holds it."""
    trimmed = _text.trim(text)
    kind = _text_shape(trimmed)
    if kind is not None:
        return kind
    if trimmed.startswith(_OPENSSH_KEY_BASE64):
        return CredentialKind.PRIVATE_KEY
    if _is_authorization_value(trimmed):
        return CredentialKind.AUTHORIZATION_HEADER
    if _is_json_web_token(trimmed):
        return CredentialKind.JSON_WEB_TOKEN
    if _is_prefixed_access_token(trimmed):
        return CredentialKind.ACCESS_TOKEN
    decoded = _decode_base64_text(trimmed)
    if decoded is None:
        return None
    kind = _text_shape(_text.trim(decoded))
    if kind is not None:
        return kind
    if '"payload"' in decoded and '"datakey"' in decoded:
        return CredentialKind.ACCESS_TOKEN
    return CredentialKind.BASE64_USER_PASSWORD if _is_user_password_pair(decoded) else None


def _text_shape(text: str) -> CredentialKind | None:
    if "-----BEGIN" in text and "PRIVATE KEY" in text:
        return CredentialKind.PRIVATE_KEY
    if text.startswith("-----BEGIN"):
        return CredentialKind.PEM_BLOCK
    if text.startswith("PuTTY-User-Key-File-"):
        return CredentialKind.PRIVATE_KEY
    if _is_docker_config_text(text):
        return CredentialKind.DOCKER_CONFIG
    if _is_kubeconfig_text(text):
        return CredentialKind.KUBECONFIG
    return None


def _is_docker_config_text(text: str) -> bool:
    return '"auths"' in text and any(
        field in text for field in ('"auth"', '"password"', '"identitytoken"', '"registrytoken"')
    )


def _is_kubeconfig_text(text: str) -> bool:
    return "apiVersion" in text and "users" in text and _has_kind_config(text)


def _has_kind_config(text: str) -> bool:
    at = text.find("kind")
    while at >= 0:
        rest = text[at + 4 :]
        if rest[:1] in ('"', "'") and rest:
            rest = rest[1:]
        rest = rest.lstrip(" \t")
        if rest.startswith(":"):
            rest = rest[1:].lstrip(" \t")
            if rest[:1] in ('"', "'") and rest:
                rest = rest[1:]
            if rest.startswith("Config"):
                after = rest[len("Config") :]
                if not (after and _text.is_ascii_alnum(after[0])):
                    return True
        at = text.find("kind", at + 4)
    return False


def _is_authorization_value(text: str) -> bool:
    head = text[:14]
    if len(head) == 14 and _text.eq_ignore_ascii_case(head, "authorization:"):
        text = _text.trim_start(text[14:])
    split = next((i for i, c in enumerate(text) if _text.is_whitespace(c)), None)
    if split is None:
        return False
    scheme, credentials = text[:split], _text.trim_start(text[split + 1 :])
    if not credentials or any(_text.is_whitespace(c) for c in credentials):
        return False
    if _text.eq_ignore_ascii_case(scheme, "bearer"):
        body = credentials.rstrip("=")
        return (
            len(body) >= 16
            and all(_text.is_ascii_alnum(c) or c in "-._~+/" for c in body)
            and any(_text.is_ascii_digit(c) for c in body)
            and any(c.isascii() and c.isalpha() for c in body)
        )
    if _text.eq_ignore_ascii_case(scheme, "basic"):
        pair = _decode_base64_text(credentials)
        return pair is not None and _is_user_password_pair(pair)
    return False


def _is_json_web_token(text: str) -> bool:
    parts = text.split(".")
    return (
        len(parts) == 3
        and parts[0].startswith("eyJ")
        and parts[1].startswith("eyJ")
        and all(_text.is_ascii_alnum(c) or c in "-_" for part in parts for c in part)
    )


def _is_prefixed_access_token(text: str) -> bool:
    for prefix in _TOKEN_PREFIXES:
        if text.startswith(prefix):
            rest = text[len(prefix) :]
            if len(rest) >= 16 and all(_text.is_ascii_alnum(c) or c in "_-" for c in rest):
                return True
    return False


def _is_user_password_pair(text: str) -> bool:
    user, colon, password = text.partition(":")
    if not colon:
        return False
    return (
        bool(user)
        and all(_text.is_ascii_alnum(c) or c in "._-@+$" for c in user)
        and bool(password)
        and all("!" <= c <= "~" for c in password)
        and not password.startswith("//")
    )


def _sextet(c: str) -> int:
    if "A" <= c <= "Z":
        return ord(c) - ord("A")
    if "a" <= c <= "z":
        return ord(c) - ord("a") + 26
    if "0" <= c <= "9":
        return ord(c) - ord("0") + 52
    if c in "+-":
        return 62
    return 63


def _decode_base64_text(text: str) -> str | None:
    """``text`` decoded as base64 (standard or URL-safe, padded or not) when it is at least 8
    characters, not only hex digits and dashes, and decodes to UTF-8."""
    # Every non-ASCII text fails the alphabet check below; this only answers sooner.
    if not text.isascii():
        return None
    if len(text) < _BASE64_MIN_LEN or all(_text.is_ascii_hexdigit(c) or c == "-" for c in text):
        return None
    body = text.rstrip("=")
    padding = len(text) - len(body)
    if padding > 2 or (padding > 0 and len(text) % 4 != 0) or len(body) % 4 == 1:
        return None
    standard = all(_text.is_ascii_alnum(c) or c in "+/" for c in body)
    url_safe = all(_text.is_ascii_alnum(c) or c in "-_" for c in body)
    if not standard and not url_safe:
        return None
    out = bytearray()
    buffer = 0
    bits = 0
    for c in body:
        buffer = ((buffer << 6) | _sextet(c)) & 0xFFFF
        bits += 6
        if bits >= 8:
            bits -= 8
            out.append((buffer >> bits) & 0xFF)
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        return None


def push_key(path: str, key: str) -> str:
    """``path`` with ``key`` appended: ``.key``, ``["…"]`` for other keys, and ``<withheld>`` for
    a key that is itself shaped like a credential."""
    plain = 1 <= len(key) <= 64 and all(_text.is_ascii_alnum(c) or c in "_-" for c in key)
    if credential_value(key) is not None:
        return f"{path}.<withheld>" if path else "<withheld>"
    if plain:
        return f"{path}.{key}" if path else key
    escaped = "".join(_text.escape_default(c) for c in key[:32])
    if len(key) > 32:
        escaped += "..."
    return f'{path}["{escaped}"]'


def find_credential(mapping: Mapping[str, object], prefix: str) -> Finding | None:
    """The first credential in ``mapping`` (depth first, keys in sorted order): a key named like
    one, or a string value (or a key) shaped like one."""
    for key in sorted(mapping):
        path = push_key(prefix, key)
        if is_credential_key(key):
            return Finding(path)
        kind = credential_value(key)
        if kind is not None:
            return Finding(path, kind)
        found = _find_in_value(mapping[key], path)
        if found is not None:
            return found
    return None


def _find_in_value(value: object, path: str) -> Finding | None:
    if isinstance(value, str):
        kind = credential_value(value)
        return Finding(path, kind) if kind is not None else None
    if isinstance(value, Mapping):
        return find_credential(value, path)
    if isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        for i, item in enumerate(value):
            found = _find_in_value(item, f"{path}[{i}]")
            if found is not None:
                return found
    return None


def find_credential_key(mapping: Mapping[str, object], prefix: str) -> str | None:
    """The path of the first key (depth first) whose *name* marks it as a credential."""
    for key in sorted(mapping):
        path = push_key(prefix, key)
        if is_credential_key(key):
            return path
        found = _find_key_in_value(mapping[key], path)
        if found is not None:
            return found
    return None


def _find_key_in_value(value: object, path: str) -> str | None:
    if isinstance(value, Mapping):
        return find_credential_key(value, path)
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes, bytearray)):
        for i, item in enumerate(value):
            found = _find_key_in_value(item, f"{path}[{i}]")
            if found is not None:
                return found
    return None
