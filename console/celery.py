"""The Celery application: training, ingestion and archival jobs run here.

Queues are split by kind (see docs/architecture.md): `io` for ingestion and archival,
`training` for a solo-pool worker on a GPU host.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings.dev")

app = Celery("revenant")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# The service packages are not Django apps; their `tasks` modules are found here.
app.autodiscover_tasks(["inference", "memory", "training", "bridge"])
