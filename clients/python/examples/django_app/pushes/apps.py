"""The example app: one row per push job, kept up to date from the fleet's events."""

from django.apps import AppConfig


class PushesConfig(AppConfig):
    name = "pushes"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import receivers  # noqa: F401 - connects the push_event receiver
