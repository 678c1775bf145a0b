"""Image references, parsed and normalised with Docker's grammar: a port of
``shared/src/reference.rs`` (``ImageRef``), with the same results and the same error messages.

``myapp`` is ``docker.io/library/myapp``; ``localhost:5000/myapp`` has no tag (the port colon is
not one); a tag absent stays absent (:attr:`ImageRef.tag` is ``None``, and
:meth:`ImageRef.tag_or_latest` is the explicit fallback). Inputs are never cleaned up: surrounding
whitespace and control characters are errors.

The Rust side wraps oci-spec's reference regular expression; the name part of that expression is
reproduced here in an equivalent form without nested quantifiers (``(?:[._]|__|[-]*)`` between
alphanumerics is the same language as ``(?:[._]|__|-+)``), so that no input can make the matcher
backtrack exponentially. Tags and digests are checked on their own before the grammar runs, as in
Rust, so the grammar only ever judges the name.
"""

import re
from dataclasses import dataclass

from . import _text

DOCKER_HUB = "docker.io"
"""Docker Hub's canonical registry name."""
_DOCKER_HUB_ALIASES = ("index.docker.io", "registry-1.docker.io")
_OFFICIAL_PREFIX = "library/"
_DEFAULT_TAG = "latest"
_TAG_MAX_LEN = 128
_NAME_MAX_LEN = 255
_SHORTEST_HOST_LEN = 3
REPOSITORY_MAX_LEN = _NAME_MAX_LEN - _SHORTEST_HOST_LEN - 1
"""The longest repository path that fits behind any registry host (251)."""
_DIGEST_ALGORITHMS = {"sha256": 64, "sha384": 96, "sha512": 128}

_ALNUM = "[a-z0-9]+"
_COMPONENT = f"{_ALNUM}(?:(?:[._]|__|-+){_ALNUM})*"
_DOMAIN_LABEL = "(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = f"{_DOMAIN_LABEL}(?:\\.{_DOMAIN_LABEL})*(?::[0-9]+)?"
_NAME_RE = re.compile(f"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*")


class ReferenceError(ValueError):
    """Why a string is not a valid image reference, or part of one.

    ``kind`` names the case as the Rust enum does (``InvalidTag``, ``UppercaseRepository``,
    ...); ``str(error)`` is the Rust message, and :attr:`hint` says what to do about it. Every
    kind maps to the error code ``invalid_reference``.
    """

    def __init__(self, kind: str, message: str, hint: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.hint = hint


def _context(input: str, part: str) -> str:
    return "" if input == part else f" in `{input}`"


def _empty() -> ReferenceError:
    return ReferenceError(
        "Empty",
        "the image reference is empty",
        "give an image reference such as `myapp:0722` or `harbor.example.com/team/app:1`",
    )


def _surrounding_whitespace(input: str) -> ReferenceError:
    trimmed = _text.trim(input)
    hint = (
        f"remove the surrounding whitespace: try `{trimmed}`"
        if trimmed
        else "give an image reference such as `myapp:0722`, not whitespace"
    )
    return ReferenceError(
        "SurroundingWhitespace",
        f"the image reference {_text.debug_str(input)} starts or ends with whitespace",
        hint,
    )


def _invalid_character(input: str, character: str, position: int) -> ReferenceError:
    c = _text.debug_char(character)
    return ReferenceError(
        "InvalidCharacter",
        f"the image reference {_text.debug_str(input)} contains {c} at position {position}; "
        "whitespace and control characters are not allowed",
        f"remove the {c} at position {position}: a reference is one word without whitespace or "
        "control characters",
    )


def _invalid_format(input: str, reason: str) -> ReferenceError:
    if "://" in input:
        hint = "drop the URL scheme: a reference looks like `harbor.example.com/team/myapp:0722`"
    else:
        hint = (
            "write it as `[registry[:port]/]repository[:tag][@sha256:<hex>]`, e.g. "
            "`localhost:5000/myapp:0722`"
        )
    return ReferenceError("InvalidFormat", f"invalid image reference `{input}`: {reason}", hint)


def _uppercase_repository(input: str, repository: str) -> ReferenceError:
    return ReferenceError(
        "UppercaseRepository",
        f"invalid image reference `{input}`: repository name `{repository}` must be lowercase",
        f"repository names must be lowercase: try `{repository.lower()}`",
    )


def _invalid_part(
    kind: str, what: str, input: str, part: str, reason: str, hint: str
) -> ReferenceError:
    """A part of ``input`` (its ``what``: tag, digest, registry, ...) that breaks its rule:
    ``invalid <what> `<part>` in `<input>`: <reason>`` (without the ``in`` when the part is
    the whole input)."""
    return ReferenceError(kind, f"invalid {what} `{part}`{_context(input, part)}: {reason}", hint)


_REPOSITORY_HINT = (
    "a repository is lowercase path components joined by `/`, without registry, tag or digest, "
    "e.g. `production/myapp`"
)
_TAG_HINT = (
    "a tag is 1 to 128 characters from `A-Z a-z 0-9 _ . -`, not starting with `.` or `-`, "
    "e.g. `0722` or `v1.2.3`"
)
_DIGEST_HINT = (
    "a digest is `sha256:` followed by 64 lowercase hex characters (sha384: 96, sha512: 128)"
)


def _invalid_repository(repository: str, reason: str) -> ReferenceError:
    return _invalid_part(
        "InvalidRepository", "repository", repository, repository, reason, _REPOSITORY_HINT
    )


def _invalid_tag(input: str, tag: str, reason: str) -> ReferenceError:
    return _invalid_part("InvalidTag", "tag", input, tag, reason, _TAG_HINT)


def _tag_too_long(input: str, tag: str, length: int) -> ReferenceError:
    return ReferenceError(
        "TagTooLong",
        f"tag `{tag}`{_context(input, tag)} is {length} characters long; a tag has at most 128",
        "shorten the tag to at most 128 characters",
    )


def _invalid_digest(input: str, digest: str, reason: str) -> ReferenceError:
    return _invalid_part("InvalidDigest", "digest", input, digest, reason, _DIGEST_HINT)


_LENGTH_HINT = "shorten the repository path: `registry/repository` must fit in 255 characters"


def _name_too_long(name: str) -> ReferenceError:
    return ReferenceError(
        "NameTooLong",
        f"image name `{name}` is {len(name)} characters long; at most 255 are allowed",
        _LENGTH_HINT,
    )


def _repository_too_long(repository: str) -> ReferenceError:
    return ReferenceError(
        "RepositoryTooLong",
        f"repository `{repository}` is {len(repository)} characters long; behind any registry "
        "host `registry/repository` would exceed 255 characters (a repository has at most "
        f"{REPOSITORY_MAX_LEN})",
        _LENGTH_HINT,
    )


def _invalid_registry(input: str, registry: str, reason: str) -> ReferenceError:
    return _invalid_part(
        "InvalidRegistry", "registry", input, registry, reason, _registry_hint(registry)
    )


def _registry_hint(registry: str) -> str:
    if "://" in registry:
        host = registry.split("://", 1)[1].split("/")[0]
        return f"drop the scheme: try `{host}`"
    if "/" in registry:
        host = registry.split("/", 1)[0]
        return (
            f"a registry is only `host[:port]`: try `{host}` and move the path into the repository"
        )
    if registry and _split_registry(f"{registry}/x")[0] is None:
        return (
            f"add the port or the full domain (`{registry}:5000`, `{registry}.example.com`): "
            f"Docker reads a bare `{registry}` as a Docker Hub namespace"
        )
    return (
        "a registry is `host[:port]`, e.g. `harbor.example.com:10443`, `127.0.0.1:5001` or "
        "`[::1]:5443`"
    )


@dataclass(frozen=True)
class ImageRef:
    """A parsed, normalised image reference: registry, repository, optional tag and digest.

    ``str()`` gives the fully-qualified form (``docker.io/library/myapp:0722``);
    :meth:`familiar` gives the short form ``docker images`` shows (``myapp:0722``).
    """

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, input: str) -> "ImageRef":
        """Parses a reference written the way the ``docker`` CLI takes it, and normalises it."""
        name, tag, digest = _checked_parts(input)
        if not name:
            raise _invalid_format(input, "there is no repository name before the `:` or `@`")
        if _is_image_id(input):
            raise _invalid_format(
                input, "a 64-character hex string is an image ID, not a repository name"
            )

        # The grammar has no IPv6 hosts: the bracketed host is checked here, and the rest is
        # judged behind a stand-in host the grammar always accepts.
        ipv6_registry: str | None = None
        grammar_name = name
        first, slash, rest = name.partition("/")
        if slash and first.startswith("["):
            reason = _validate_host(first)
            if reason is not None:
                raise _invalid_registry(input, first, reason)
            ipv6_registry = first
            grammar_name = f"localhost/{rest}"

        if not _NAME_RE.fullmatch(grammar_name):
            raise _diagnose_name(input, name)
        grammar_registry, grammar_repository = _split_domain(grammar_name)
        if len(grammar_repository) > _NAME_MAX_LEN:
            registry_part, path = _split_registry(name)
            raise _name_too_long(f"{registry_part or DOCKER_HUB}/{path}")

        if any(_text.is_ascii_upper(c) for c in grammar_repository):
            raise _uppercase_repository(input, _split_registry(name)[1])
        registry = ipv6_registry if ipv6_registry is not None else grammar_registry
        if ipv6_registry is None and registry != DOCKER_HUB:
            reason = _validate_host(registry)
            if reason is not None:
                raise _invalid_registry(input, registry, reason)
        image = cls._normalised(registry, grammar_repository, tag, digest)
        image._check_name_length()
        return image

    @classmethod
    def for_registry(cls, registry: str, repository: str, tag: str) -> "ImageRef":
        """The reference a job pushes to, from a registry host, a repository path and a tag."""
        reason = _validate_host(registry)
        if reason is not None:
            raise _invalid_registry(registry, registry, reason)
        if _split_registry(f"{registry}/x")[0] is None:
            raise _invalid_registry(
                registry,
                registry,
                f"Docker would read `{registry}` as a Docker Hub namespace, not as a registry host",
            )
        _validate_repository(repository)
        _validate_tag(tag, tag)
        image = cls._normalised(registry, repository, tag, None)
        image._check_name_length()
        return image

    @staticmethod
    def check_target(repository: str, tag: str) -> None:
        """Checks a target repository and tag without a registry host (as a job is checked)."""
        _validate_repository(repository)
        _validate_tag(tag, tag)
        if len(repository) > REPOSITORY_MAX_LEN:
            raise _repository_too_long(repository)

    @classmethod
    def _normalised(
        cls, registry: str, repository: str, tag: str | None, digest: str | None
    ) -> "ImageRef":
        if registry in _DOCKER_HUB_ALIASES:
            registry = DOCKER_HUB
        if registry == DOCKER_HUB and "/" not in repository:
            repository = _OFFICIAL_PREFIX + repository
        return cls(registry, repository, tag, digest)

    def _check_name_length(self) -> None:
        name = self.name()
        if len(name) > _NAME_MAX_LEN:
            raise _name_too_long(name)

    def name(self) -> str:
        """``registry/repository``, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    def tag_or_latest(self) -> str:
        """The tag, or ``latest`` when none was written (what Docker uses)."""
        return self.tag if self.tag is not None else _DEFAULT_TAG

    def is_docker_hub(self) -> bool:
        return self.registry == DOCKER_HUB

    def is_docker_hub_root(self) -> bool:
        """A Docker Hub repository without a user namespace (``library/x``): not pushable."""
        if not self.is_docker_hub() or not self.repository.startswith(_OFFICIAL_PREFIX):
            return False
        return "/" not in self.repository[len(_OFFICIAL_PREFIX) :]

    def with_tag(self, tag: str) -> "ImageRef":
        """The same repository with ``tag``; any digest is dropped."""
        _validate_tag(tag, tag)
        return ImageRef(self.registry, self.repository, tag, None)

    def familiar(self) -> str:
        """Docker's familiar form (``myapp:0722``), which always parses back to this reference."""
        if self.is_docker_hub():
            path = self.repository
            if path.startswith(_OFFICIAL_PREFIX) and "/" not in path[len(_OFFICIAL_PREFIX) :]:
                path = path[len(_OFFICIAL_PREFIX) :]
            out = (
                self.name() if _split_registry(path)[0] is not None or _is_image_id(path) else path
            )
        else:
            out = self.name()
        return out + self._tag_and_digest()

    def _tag_and_digest(self) -> str:
        return _tag_and_digest(self.tag, self.digest)

    def __str__(self) -> str:
        return self.name() + self._tag_and_digest()


def _checked_parts(input: str) -> tuple[str, str | None, str | None]:
    """``_split_parts`` of an input whose characters, digest and tag are checked
    (``Parts::checked`` in Rust)."""
    _check_characters(input)
    name, tag, digest = _split_parts(input)
    if digest is not None:
        _validate_digest(input, digest)
    if tag is not None:
        _validate_tag(input, tag)
    return name, tag, digest


def _tag_and_digest(tag: str | None, digest: str | None) -> str:
    """``:tag`` and ``@digest``, each when given."""
    out = ""
    if tag is not None:
        out += f":{tag}"
    if digest is not None:
        out += f"@{digest}"
    return out


def source_reference(image: str, tag: str | None) -> ImageRef:
    """The source of a push with the Django step's semantics: an ``image`` without tag or digest
    takes ``tag``; one that has a tag or digest keeps it."""
    parsed = ImageRef.parse(image)
    if tag is not None and parsed.tag is None and parsed.digest is None:
        return parsed.with_tag(tag)
    return parsed


def _check_characters(input: str) -> None:
    if not input:
        raise _empty()
    if _text.is_whitespace(input[0]) or _text.is_whitespace(input[-1]):
        raise _surrounding_whitespace(input)
    for position, c in enumerate(input):
        if _text.is_whitespace(c) or _text.is_control(c):
            raise _invalid_character(input, c, position)


def _split_parts(input: str) -> tuple[str, str | None, str | None]:
    """Name, tag and digest, cut as Docker's grammar cuts them."""
    name_and_tag, at, after = input.partition("@")
    digest = after if at else None
    if name_and_tag.startswith("[") and "/" not in name_and_tag:
        raise _invalid_format(
            input, "a registry alone is not an image: add the repository, e.g. `[::1]:5443/myapp`"
        )
    last_component = name_and_tag.rfind("/") + 1
    colon = name_and_tag.find(":", last_component)
    if colon >= 0:
        return name_and_tag[:colon], name_and_tag[colon + 1 :], digest
    return name_and_tag, None, digest


def _split_registry(name: str) -> tuple[str | None, str]:
    """Docker's rule: the first component is a registry when it has ``.`` or ``:``, is
    bracketed, or is ``localhost``."""
    first, slash, rest = name.partition("/")
    if slash and (any(c in first for c in ".:[") or first == "localhost"):
        return first, rest
    return None, name


def _split_domain(name: str) -> tuple[str, str]:
    """oci-spec's ``split_domain``: the registry as the grammar's caller sees it."""
    left, slash, right = name.partition("/")
    if not slash or (not ("." in left or ":" in left) and left != "localhost"):
        domain, remainder = DOCKER_HUB, name
    else:
        domain, remainder = left, right
    if domain == "index.docker.io":
        domain = DOCKER_HUB
    if domain == DOCKER_HUB and "/" not in remainder:
        remainder = _OFFICIAL_PREFIX + remainder
    return domain, remainder


def _is_image_id(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def _validate_tag(input: str, tag: str) -> None:
    if not tag:
        raise _invalid_tag(input, tag, "the tag is empty")
    if ":" in tag:
        raise _invalid_tag(
            input, tag, "a reference has at most one `:tag`, and a tag cannot contain `:`"
        )
    for c in tag:
        if _text.is_whitespace(c) or _text.is_control(c):
            raise _invalid_tag(
                input,
                tag,
                f"{_text.debug_char(c)} is not allowed: a tag has no whitespace or control "
                "characters",
            )
    if tag[0] in ".-":
        raise _invalid_tag(input, tag, "a tag cannot start with `.` or `-`")
    for c in tag:
        if not (_text.is_ascii_alnum(c) or c in "_.-"):
            raise _invalid_tag(
                input,
                tag,
                f"`{c}` is not allowed in a tag (allowed: ASCII letters, digits, `_`, `.`, `-`)",
            )
    if len(tag) > _TAG_MAX_LEN:
        raise _tag_too_long(input, tag, len(tag))


def _validate_digest(input: str, digest: str) -> None:
    algorithm, colon, hex_part = digest.partition(":")
    if not colon:
        raise _invalid_digest(input, digest, "expected `algorithm:hex`, e.g. `sha256:<64 hex>`")
    expected = _DIGEST_ALGORITHMS.get(algorithm)
    if expected is None:
        raise _invalid_digest(
            input,
            digest,
            f"unsupported digest algorithm `{algorithm}` (supported: sha256, sha384, sha512)",
        )
    for c in hex_part:
        if not _text.is_ascii_hexdigit(c):
            raise _invalid_digest(input, digest, f"`{c}` is not a hex digit")
    if any(_text.is_ascii_upper(c) for c in hex_part):
        raise _invalid_digest(input, digest, "the hex part must be lowercase")
    if len(hex_part) != expected:
        raise _invalid_digest(
            input,
            digest,
            f"a {algorithm} digest has {expected} hex characters, this one has {len(hex_part)}",
        )


def _validate_host(registry: str) -> str | None:
    """The reason ``registry`` is not a ``host[:port]`` as Docker's grammar has it, or None."""
    if not registry:
        return "the registry is empty"
    if any(_text.is_whitespace(c) or _text.is_control(c) for c in registry):
        return "a registry has no whitespace or control characters"
    if "://" in registry:
        return "a registry is `host[:port]`, without a URL scheme"
    if "/" in registry:
        return "a registry is `host[:port]`, without a path"
    host: str | None
    port: str | None
    if registry.startswith("["):
        address, closed, after = registry[1:].partition("]")
        if not closed:
            return "`[` opens an IPv6 address that is never closed with `]`"
        if not address or not all(_text.is_ascii_hexdigit(c) or c == ":" for c in address):
            return f"`[{address}]` is not an IPv6 address"
        if not after:
            return None
        if not after.startswith(":"):
            return "only `:port` may follow an IPv6 address"
        host, port = None, after[1:]
    else:
        host, colon, port_part = registry.partition(":")
        port = port_part if colon else None
    if port is not None and (not port or not all(_text.is_ascii_digit(c) for c in port)):
        return f"the port `{port}` is not a number"
    if host is not None:
        for component in host.split("."):
            valid = (
                bool(component)
                and all(_text.is_ascii_alnum(c) or c == "-" for c in component)
                and not component.startswith("-")
                and not component.endswith("-")
            )
            if not valid:
                return (
                    f"`{host}` is not a host name: each `.`-separated part is ASCII letters, "
                    "digits and inner `-`"
                )
    return None


def _validate_repository(repository: str) -> None:
    if not repository:
        raise _invalid_repository(repository, "the repository is empty")
    if any(_text.is_whitespace(c) or _text.is_control(c) for c in repository):
        raise _invalid_repository(
            repository, "a repository has no whitespace or control characters"
        )
    if ":" in repository or "@" in repository:
        raise _invalid_repository(
            repository, "a repository has no tag or digest: pass the tag separately"
        )
    problem = _path_shape_problem(repository)
    if problem is not None:
        raise _invalid_repository(repository, problem)
    if any(_text.is_ascii_upper(c) for c in repository):
        raise _uppercase_repository(repository, repository)
    if not _NAME_RE.fullmatch(f"localhost/{repository}"):
        raise _invalid_repository(repository, _path_grammar_reason(repository))


def _path_shape_problem(path: str) -> str | None:
    if path.startswith("/"):
        return "it starts with `/`"
    if path.endswith("/"):
        return "it ends with `/`"
    if "//" in path:
        return "it has an empty path component (`//`)"
    return None


def _path_grammar_reason(path: str) -> str:
    rule = (
        "each `/`-separated component is lowercase letters and digits, joined by one `.`, one or "
        "two `_`, or dashes"
    )
    for c in path:
        if not (_text.is_ascii_lower(c) or _text.is_ascii_digit(c) or c in "._-/"):
            return f"`{c}` is not allowed in a repository path: {rule}"
    return f"`{path}` is not a valid repository path: {rule}"


def _diagnose_name(input: str, name: str) -> ReferenceError:
    """The most specific error for a name the grammar refused."""
    if "://" in input:
        return _invalid_format(input, "a reference has no URL scheme (`https://`)")
    problem = _path_shape_problem(name)
    if problem is not None:
        return _invalid_format(input, problem)
    registry, path = _split_registry(name)
    if registry is not None:
        reason = _validate_host(registry)
        if reason is not None:
            return _invalid_registry(input, registry, reason)
    if any(_text.is_ascii_upper(c) for c in path):
        lowered = path.lower()
        if _NAME_RE.fullmatch(f"localhost/{lowered}") and len(lowered) <= _NAME_MAX_LEN:
            return _uppercase_repository(input, path)
    return _invalid_format(input, _path_grammar_reason(path))


@dataclass(frozen=True)
class InRegistry:
    """An image inside a registry named elsewhere (a job's ``source`` with
    ``source_registry``): ``repository[:tag][@digest]``, no host. A port of ``InRegistry`` in
    ``shared/src/reference.rs``; build one with :func:`parse_in_registry`.

    ``str()`` gives ``repository[:tag][@digest]`` as written.
    """

    repository: str
    tag: str | None = None
    digest: str | None = None

    def reference(self) -> str:
        """What a registry is asked for: the digest when one is written, else the tag
        (``latest`` when none is, as in Docker)."""
        if self.digest is not None:
            return self.digest
        return self.tag if self.tag is not None else _DEFAULT_TAG

    def at(self, host: str) -> str:
        """The image written out on ``host``: ``host/repository[:tag][@digest]``."""
        return f"{host}/{self}"

    def __str__(self) -> str:
        return self.repository + _tag_and_digest(self.tag, self.digest)


def parse_in_registry(input: str) -> InRegistry:
    """Reads a reference to an image inside a registry known by other means (a job's
    ``source`` with ``source_registry``): ``repository[:tag][@digest]``, no host.

    ``ImageRef::parse_in_registry`` in Rust, with the same checks in the same order and the
    same messages: the characters as in :meth:`ImageRef.parse`; the split into name, tag and
    digest as Docker cuts it; the digest, then the tag; the repository as in
    :meth:`ImageRef.check_target`, with its length bound. A first component with a ``.`` or a
    ``:`` is not a host here: ``ci.team/app`` is a repository path, and
    ``localhost:5000/app`` is refused (a repository has no ``:``).

    Raises :class:`ReferenceError`.
    """
    name, tag, digest = _checked_parts(input)
    _validate_repository(name)
    if len(name) > REPOSITORY_MAX_LEN:
        raise _repository_too_long(name)
    return InRegistry(name, tag, digest)
