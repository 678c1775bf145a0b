"""Pool names: a port of ``shared/src/pool.rs``.

A job names the pool (build host) whose Docker daemon holds its image; each pool has its own
queue, and only the workers that list the pool in ``worker.pools`` take its jobs. A job without
a pool is in the default pool, whose names are the fleet's original ones. A pool name is an
RFC 1123 label: 1 to 63 lowercase letters, digits and ``-``, starting and ending with a letter
or digit.
"""

from . import _text

DEFAULT_POOL = "default"
MAX_POOL_LEN = 63
POOL_PATTERN = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"

_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")


def is_valid_pool(name: str) -> bool:
    """Whether ``name`` is a pool name."""
    return (
        0 < len(name) <= MAX_POOL_LEN
        and name[0] in _ALNUM
        and name[-1] in _ALNUM
        and all(c in _ALNUM or c == "-" for c in name)
    )


def invalid_pool_message(name: str) -> str:
    """The Rust ``InvalidPool`` message for ``name`` (cut to 80 characters)."""
    return (
        f"pool {_text.debug_str(name[:80])} is not a pool name: 1 to 63 lowercase letters, "
        "digits and '-', starting and ending with a letter or digit"
    )


INVALID_POOL_HINT = (
    "name the pool as the workers' `worker.pools` do (lowercase letters, digits and '-'), or "
    "leave `pool` out for the default pool"
)
