"""A push as the backend tracks it."""

from django.db import models

TERMINAL_STATES = ("succeeded", "failed", "dead")


class PushRecord(models.Model):
    """One push job: ``state`` follows its events until the first terminal one."""

    job_id = models.CharField(max_length=128, unique=True)
    source = models.CharField(max_length=512)
    target = models.CharField(max_length=512)
    # queued, publish_failed, accepted, progress, retrying, succeeded, failed, dead
    state = models.CharField(max_length=32, default="queued")
    digest = models.CharField(max_length=100, blank=True, default="")
    error_code = models.CharField(max_length=64, blank=True, default="")
    error_message = models.TextField(blank=True, default="")
    updated = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.job_id} {self.source} -> {self.target}: {self.state}"
