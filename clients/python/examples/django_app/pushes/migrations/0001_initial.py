from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies: list[tuple[str, str]] = []

    operations = [
        migrations.CreateModel(
            name="PushRecord",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("job_id", models.CharField(max_length=128, unique=True)),
                ("source", models.CharField(max_length=512)),
                ("target", models.CharField(max_length=512)),
                ("state", models.CharField(default="queued", max_length=32)),
                ("digest", models.CharField(blank=True, default="", max_length=100)),
                ("error_code", models.CharField(blank=True, default="", max_length=64)),
                ("error_message", models.TextField(blank=True, default="")),
                ("updated", models.DateTimeField(auto_now=True)),
            ],
        ),
    ]
