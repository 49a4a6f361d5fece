"""EndedSession: what a Django session deleted for a revocation held (see the models)."""

from typing import Any, ClassVar

from django.db import migrations, models


class Migration(migrations.Migration):  # type: ignore[misc]  # django is untyped here
    dependencies: ClassVar[list[tuple[str, str]]] = [("kc_sso_middleware", "0001_initial")]

    operations: ClassVar[list[Any]] = [
        migrations.CreateModel(
            name="EndedSession",
            fields=[
                (
                    "session_key",
                    models.CharField(max_length=255, primary_key=True, serialize=False),
                ),
                ("sid", models.CharField(blank=True, max_length=255, null=True)),
                ("sub", models.CharField(blank=True, max_length=255, null=True)),
                ("session_subject", models.BigIntegerField(null=True)),
                ("instance_subject", models.BigIntegerField(null=True)),
                ("user_subject", models.BigIntegerField(null=True)),
                ("client_subject", models.BigIntegerField()),
                ("issued_at", models.FloatField(null=True)),
                ("expires_at", models.FloatField(db_index=True)),
            ],
            options={
                "verbose_name": "ended Keycloak session",
            },
        ),
    ]
