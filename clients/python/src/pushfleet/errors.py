"""Error codes and the exceptions of the client.

:class:`ErrorCode` mirrors ``shared/src/error_code.rs`` (``docs/errors.md``): the stable
``error.code`` of failed events, also carried by the exceptions for jobs that are refused
before they are published (:class:`pushfleet.JobError`, :class:`pushfleet.DjangoMappingError`).

Publishing raises a :class:`PublishError` whenever the broker did not confirm the job: a
publish returns only after the broker's ``basic.ack``, never on a hope.
"""

import enum


class ErrorCode(enum.StrEnum):
    """Why a job failed; the wire form is the value (``"registry_unreachable"``)."""

    INVALID_MESSAGE = "invalid_message"
    INVALID_SIGNATURE = "invalid_signature"
    INVALID_REFERENCE = "invalid_reference"
    UNKNOWN_REGISTRY = "unknown_registry"
    NAMESPACE_NOT_ALLOWED = "namespace_not_allowed"
    REGISTRY_CREDENTIALS_MISSING = "registry_credentials_missing"
    SOURCE_IMAGE_MISSING = "source_image_missing"
    ROOT_REPOSITORY_ON_DOCKER_HUB = "root_repository_on_docker_hub"
    REGISTRY_UNREACHABLE = "registry_unreachable"
    REGISTRY_TLS_FAILED = "registry_tls_failed"
    REGISTRY_AUTH_FAILED = "registry_auth_failed"
    REGISTRY_INSUFFICIENT_SCOPE = "registry_insufficient_scope"
    REGISTRY_DENIED = "registry_denied"
    REGISTRY_RATE_LIMITED = "registry_rate_limited"
    BLOB_UPLOAD_INVALID = "blob_upload_invalid"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    DAEMON_UNAVAILABLE = "daemon_unavailable"
    DIGEST_MISMATCH = "digest_mismatch"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    PUSH_FAILED = "push_failed"
    TAG_IMMUTABLE = "tag_immutable"
    DAEMON_NOT_CONFIGURED = "daemon_not_configured"
    MANIFEST_UNSUPPORTED = "manifest_unsupported"

    @property
    def retryable(self) -> bool:
        """Whether the same job can succeed later without anyone changing anything."""
        return self in _RETRYABLE

    @property
    def default_hint(self) -> str:
        return _DEFAULT_HINTS[self]


_RETRYABLE = frozenset(
    {
        ErrorCode.REGISTRY_UNREACHABLE,
        ErrorCode.REGISTRY_RATE_LIMITED,
        ErrorCode.DAEMON_UNAVAILABLE,
        ErrorCode.TIMEOUT,
    }
)

_DEFAULT_HINTS = {
    ErrorCode.INVALID_MESSAGE: (
        "the message is not a valid v1 push job: compare it with schemas/job.schema.json"
    ),
    ErrorCode.INVALID_SIGNATURE: (
        "sign the job with the fleet's shared key (header x-pushfleet-signature: v1=<hex "
        "HMAC-SHA256 of the body>)"
    ),
    ErrorCode.INVALID_REFERENCE: (
        "check the image name: lowercase repository, tag of letters, digits, '_', '.', '-' (at "
        "most 128)"
    ),
    ErrorCode.UNKNOWN_REGISTRY: (
        "target.registry must be a key or alias of the worker's registry catalogue (see "
        "`pushfleet check-config`)"
    ),
    ErrorCode.NAMESPACE_NOT_ALLOWED: (
        "push into one of the namespaces the catalogue lists for this registry, or add the "
        "namespace there"
    ),
    ErrorCode.REGISTRY_CREDENTIALS_MISSING: (
        "set password_file or password_env for this registry in the worker configuration and "
        "make sure it is readable and not empty"
    ),
    ErrorCode.SOURCE_IMAGE_MISSING: (
        "build or load the source image on the worker's Docker daemon first, with the exact tag "
        "the job names"
    ),
    ErrorCode.ROOT_REPOSITORY_ON_DOCKER_HUB: (
        "Docker Hub needs a namespace: push to docker.io/<user-or-org>/<name>"
    ),
    ErrorCode.REGISTRY_UNREACHABLE: (
        "the registry did not answer; it will be retried. Check that it runs and the URL in the "
        "catalogue is right"
    ),
    ErrorCode.REGISTRY_TLS_FAILED: (
        "the registry's certificate is not trusted: set ca_file for this registry (and the "
        "daemon's certs.d) or fix the certificate"
    ),
    ErrorCode.REGISTRY_AUTH_FAILED: (
        "the registry refused the username/password: check the credentials configured for this "
        "registry"
    ),
    ErrorCode.REGISTRY_INSUFFICIENT_SCOPE: (
        "the account may not push to this repository: grant it push rights or choose a "
        "repository it may push to"
    ),
    ErrorCode.REGISTRY_DENIED: (
        "the registry denied the push: check the account's rights on this repository"
    ),
    ErrorCode.REGISTRY_RATE_LIMITED: (
        "the registry is rate limiting; the job will be retried after the delay it asked for"
    ),
    ErrorCode.BLOB_UPLOAD_INVALID: (
        "the registry rejected a layer upload: check its storage and proxy settings, then retry"
    ),
    ErrorCode.PAYLOAD_TOO_LARGE: (
        "a layer is larger than the registry or a proxy in front of it accepts (HTTP 413): raise "
        "the body size limit"
    ),
    ErrorCode.DAEMON_UNAVAILABLE: (
        "the Docker daemon did not answer; it will be retried. Check the worker's docker.host"
    ),
    ErrorCode.DIGEST_MISMATCH: (
        "the registry holds a different manifest than the one pushed: another push to the same "
        "tag may have raced this one"
    ),
    ErrorCode.TIMEOUT: (
        "the job exceeded its time limit; it will be retried. Raise options.timeout_s for large "
        "images"
    ),
    ErrorCode.CANCELLED: "the job was cancelled on request",
    ErrorCode.PUSH_FAILED: (
        "the push failed for an unclassified reason: read the message, then retry"
    ),
    ErrorCode.TAG_IMMUTABLE: (
        "the registry keeps this tag immutable: push under a new tag (e.g. the next version), or "
        "ask the registry's admins to exempt it from the immutability rule"
    ),
    ErrorCode.DAEMON_NOT_CONFIGURED: (
        "this worker has no Docker daemon: publish the job to the pool of the build host whose "
        "daemon holds the image (`pool`), or copy it from a registry (`source_registry`)"
    ),
    ErrorCode.MANIFEST_UNSUPPORTED: (
        "only Docker schema 2 and OCI image manifests, and indexes of them, are copied between "
        "registries: push the image to the source registry again with a current client"
    ),
}


class PushfleetError(Exception):
    """Base class of every exception this package raises on purpose."""


class SigningKeyError(PushfleetError, ValueError):
    """The job-signing key file cannot be used (unreadable, or shorter than 32 bytes)."""


class PublishError(PushfleetError):
    """The broker did not confirm the job (or the cancel request): it may not be queued.

    Publishing the same job again is safe: a job that runs twice pushes the same digest (the
    second run reports ``already_present``), and consumers dedupe events by ``event_id``.
    """


class BrokerUnavailable(PublishError):
    """No connection to the broker, or it was lost before the confirm, and retries ran out."""


class TopologyMissing(PublishError):
    """The exchange does not exist: no fleet ever ran with this topology prefix."""


class UnroutableJob(PublishError):
    """The broker returned the message (``basic.return``): no queue is bound for it."""

    def __init__(self, message: str, reply_code: int, reply_text: str) -> None:
        super().__init__(message)
        self.reply_code = reply_code
        self.reply_text = reply_text


class PublishRefused(PublishError):
    """The broker refused the message (``basic.nack``, after the retries), e.g. a full queue
    (``x-overflow: reject-publish``)."""


class ConfirmTimeout(PublishError):
    """No confirm came within the client's ``confirm_timeout``, even after retries."""


class WaitTimeout(PushfleetError, TimeoutError):
    """No terminal event for the job arrived in time (the job may still finish)."""


class SubscriptionLost(PushfleetError):
    """The connection of an event subscription was lost; events published meanwhile are lost
    to it (its queue was exclusive). Follow jobs durably with the Django command instead."""
