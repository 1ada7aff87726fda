"""Settings for `make run` on a designer's or developer's machine."""

from console.localstack import VAR_DIR, embedded_postgres_url

from .base import *  # noqa: F403
from .base import database_settings, env

# make run writes a random SECRET_KEY here on first start; the environment still wins.
env.read_env(VAR_DIR / "dev.env")
# Without DATABASE_URL, the embedded PostgreSQL under var/pgdata (started here if it is not running).
DATABASES = database_settings(env.str("DATABASE_URL", default="") or embedded_postgres_url())
SECRET_KEY = env.str("SECRET_KEY")
DEBUG = env.bool("DEBUG", default=True)
