"""Settings of the example project: SQLite, the example app, and pushfleet from the
environment (no secret in this file: the AMQP password belongs in the URL from a secret, the
signing key in a file)."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = True
ALLOWED_HOSTS: list[str] = []
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "pushfleet.django",
    "pushes",
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": BASE_DIR / "example.sqlite3",
    }
}

PUSHFLEET = {
    "URL": os.environ.get("PUSHFLEET_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
    "TOPOLOGY_PREFIX": os.environ.get("PUSHFLEET_TOPOLOGY_PREFIX", "pushfleet"),
    "SIGNING_KEY_FILE": os.environ.get("PUSHFLEET_SIGNING_KEY_FILE") or None,
    "EVENTS_QUEUE": os.environ.get("PUSHFLEET_EVENTS_QUEUE") or None,
}

LOGGING = {
    "version": 1,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"pushfleet": {"handlers": ["console"], "level": "INFO"}},
}
