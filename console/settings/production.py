"""Settings for a deployment: every secret from the environment, HTTPS everywhere.

Passes `manage.py check --deploy --fail-level WARNING` (make test checks it).
"""

from django.core.exceptions import ImproperlyConfigured

from .base import *  # noqa: F403
from .base import database_settings, env

DEBUG = False
# A production host never starts a database of its own: without DATABASE_URL it would have run
# on an empty local server in var/pgdata instead of failing.
DATABASE_URL = env.str("DATABASE_URL", default="")
if not DATABASE_URL:
    raise ImproperlyConfigured(
        "DATABASE_URL must be set to the PostgreSQL (with pgvector) this deployment uses, e.g. "
        "postgres://revenant:PASSWORD@db.example.org:5432/revenant; production settings never start "
        "the embedded development server."
    )
DATABASES = database_settings(DATABASE_URL)
SECRET_KEY = env.str("SECRET_KEY", default="")
if len(SECRET_KEY) < 50:
    raise ImproperlyConfigured("SECRET_KEY must be set to a random string of at least 50 characters.")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=[])
if not ALLOWED_HOSTS:
    raise ImproperlyConfigured("ALLOWED_HOSTS must list the host names this server answers to.")

SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
# Behind a TLS-terminating proxy that sets X-Forwarded-Proto.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
HEALTH_REQUIRE_CELERY = env.bool("HEALTH_REQUIRE_CELERY", default=True)
# Anyone who reaches a worker without the key could load adapters from any path or use the GPU.
INFERENCE_API_KEY = env.str("INFERENCE_API_KEY", default="")
if len(INFERENCE_API_KEY) < 32:
    raise ImproperlyConfigured(
        "INFERENCE_API_KEY must be set to a random string of at least 32 characters: the vLLM workers "
        "require it as their API key (start them with the same INFERENCE_API_KEY in their environment)."
    )
# /metrics (and /health/'s details) would tell anyone the traffic, players' costs and the workers.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
if len(METRICS_TOKEN) < 32:
    raise ImproperlyConfigured(
        "METRICS_TOKEN must be set to a random string of at least 32 characters: Prometheus sends it as "
        "`Authorization: Bearer <METRICS_TOKEN>` to /metrics (and may read /health/'s details with it)."
    )
