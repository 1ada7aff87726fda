"""The Django project and the system of record: worlds, archetypes, adapters, NPCs, game keys.

The Celery app is imported here so that `shared_task` binds to it in every process.
"""

from .celery import app as celery_app

__all__ = ["celery_app"]
