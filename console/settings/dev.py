"""Settings for `make run` on a designer's or developer's machine."""

from console.localstack import VAR_DIR

from .base import *  # noqa: F403
from .base import env

# make run writes a random SECRET_KEY here on first start; the environment still wins.
env.read_env(VAR_DIR / "dev.env")
SECRET_KEY = env.str("SECRET_KEY")
DEBUG = env.bool("DEBUG", default=True)
