"""The Django app of the integration (``INSTALLED_APPS = [..., "pushfleet.django"]``)."""

from django.apps import AppConfig


class PushfleetConfig(AppConfig):
    name = "pushfleet.django"
    label = "pushfleet"
    verbose_name = "pushfleet"
