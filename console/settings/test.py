"""Settings for the test suite: real Postgres and Redis, isolated keys and databases."""

from console.localstack import embedded_postgres_url

from .base import *  # noqa: F403
from .base import CHANNEL_LAYERS, database_settings, env

# Without DATABASE_URL, the embedded PostgreSQL under var/pgdata (started here if it is not running).
DATABASES = database_settings(env.str("DATABASE_URL", default="") or embedded_postgres_url())

SECRET_KEY = "test-only-key-not-for-any-deployment-7a1f0c9e2b4d"  # noqa: S105 - tests only
DEBUG = False
# Fast hashing: the suite creates many users; production keeps PBKDF2.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# A separate Redis database and channel prefix so tests never touch a running demo's data.
REDIS_URL = env.str("TEST_REDIS_URL", default="redis://127.0.0.1:6379/9")
CHANNEL_LAYERS["default"]["CONFIG"] = {
    "hosts": [{"address": REDIS_URL, "socket_timeout": None}],
    "prefix": "revenant-test",
}
CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
CELERY_BROKER_URL = REDIS_URL
CELERY_TASK_ALWAYS_EAGER = False
# The suite's own worker (tests/inference) is addressed explicitly; unit tests run without one.
HEALTH_REQUIRE_WORKERS = False
INFERENCE_WORKERS = [env.str("TEST_INFERENCE_WORKER", default="http://127.0.0.1:8197")]
# The suite's workers run with a key like a deployment's (tests/inference/test_worker_auth.py).
INFERENCE_API_KEY = env.str("TEST_INFERENCE_API_KEY", default="test-only-inference-key-5d2c8e1f")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.InMemoryStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# The end-to-end tests' Daphne serves static files straight from the source folders (no collectstatic).
WHITENOISE_USE_FINDERS = True
# Two suites on one machine (parallel sessions, a helper beside `make test`) each need their own
# test database; TEST_REDIS_URL and TEST_INFERENCE_WORKER separate the rest.
if test_database := env.str("TEST_DATABASE_NAME", default=""):
    DATABASES["default"]["TEST"] = {**DATABASES["default"].get("TEST", {}), "NAME": test_database}
