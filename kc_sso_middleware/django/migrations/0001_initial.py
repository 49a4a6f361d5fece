"""The SessionLink index (see kc_sso_middleware.django.models)."""

from typing import Any, ClassVar

from django.db import migrations, models


class Migration(migrations.Migration):  # type: ignore[misc]  # django is untyped here
    initial = True

    dependencies: ClassVar[list[tuple[str, str]]] = []

    operations: ClassVar[list[Any]] = [
        migrations.CreateModel(
            name="SessionLink",
            fields=[
                (
                    "session_key",
                    models.CharField(max_length=255, primary_key=True, serialize=False),
                ),
                ("sid", models.CharField(blank=True, max_length=255, null=True)),
                ("sub", models.CharField(blank=True, max_length=255, null=True)),
                ("session_subject", models.BigIntegerField(db_index=True, null=True)),
                ("instance_subject", models.BigIntegerField(db_index=True, null=True)),
                ("user_subject", models.BigIntegerField(db_index=True, null=True)),
                ("client_subject", models.BigIntegerField()),
                ("issued_at", models.FloatField(null=True)),
                ("expires_at", models.FloatField(db_index=True)),
            ],
            options={
                "verbose_name": "Keycloak session link",
            },
        ),
    ]
