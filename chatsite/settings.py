"""The one settings module, driven by environment variables (a `.env` file may supply them).

Zero configuration gives a working development site: SQLite in the project,
the in-memory channel layer, and the offline demo model.
"""

import os
from pathlib import Path

import dj_database_url
from django.utils.csp import CSP

BASE_DIR = Path(__file__).resolve().parent.parent


def _load_dotenv(path: Path) -> None:
    """Read KEY=VALUE lines; the real environment wins over the file."""
    if not path.is_file():
        return
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.removeprefix("export ").split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        os.environ.setdefault(key.strip(), value)


_load_dotenv(BASE_DIR / ".env")


def env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


DEBUG = env_bool("DJANGO_DEBUG", True)
SECRET_KEY = env("DJANGO_SECRET_KEY") or ("django-insecure-development-only-key" if DEBUG else "")
if not SECRET_KEY:
    raise RuntimeError("Set DJANGO_SECRET_KEY when DJANGO_DEBUG is off.")

ALLOWED_HOSTS = [
    h.strip() for h in env("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",")
]
CSRF_TRUSTED_ORIGINS = [o for o in env("DJANGO_CSRF_TRUSTED_ORIGINS").split(",") if o]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "conversations",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Daphne serves no static files itself; WhiteNoise does, without a proxy.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
]

ROOT_URLCONF = "chatsite.urls"
ASGI_APPLICATION = "chatsite.asgi.application"

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
                "conversations.context_processors.site",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        env("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
        # Channels runs database work on one thread per process: keep its connection.
        conn_max_age=int(env("DATABASE_CONN_MAX_AGE", "60")),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets readers (page loads) proceed while a reply is being stored.
    DATABASES["default"].setdefault("OPTIONS", {})["init_command"] = (
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
    )
    DATABASES["default"]["OPTIONS"]["transaction_mode"] = "IMMEDIATE"
    DATABASES["default"]["OPTIONS"]["timeout"] = 20

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

if env("REDIS_URL"):
    # Redis pub/sub: one PUBLISH per frame, delivered to the processes whose sockets
    # listen. Nothing is queued in Redis for a process that is gone; a socket that
    # misses a frame sees a gap in the offsets and recovers through a snapshot.
    # (channels-redis's queueing layer lost frames under load in bench/streaming.py.)
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {
                "hosts": [env("REDIS_URL")],
                "prefix": env("CHANNEL_LAYER_PREFIX", "chat"),
            },
        }
    }
else:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "conversations.layers.InMemoryChannelLayer",
            "CONFIG": {"capacity": 1000},
        }
    }

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "conversation-list"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
# In development static files are served straight from static/; in production
# from STATIC_ROOT after `collectstatic`, with hashed names cached forever.
WHITENOISE_USE_FINDERS = DEBUG
WHITENOISE_AUTOREFRESH = DEBUG
if not DEBUG:
    STORAGES = {
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
        "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
    }

SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"

# Model output is untrusted: no inline script, nothing fetched from another host.
SECURE_CSP = {
    "default-src": [CSP.SELF],
    "script-src": [CSP.SELF],
    "style-src": [CSP.SELF],
    "img-src": [CSP.SELF, "data:"],
    "connect-src": [CSP.SELF],
    "font-src": [CSP.SELF],
    "object-src": [CSP.NONE],
    "frame-ancestors": [CSP.NONE],
    "base-uri": [CSP.NONE],
    "form-action": [CSP.SELF],
}
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"

if not DEBUG:
    # Production: HTTPS only. Behind a proxy that terminates TLS, set
    # DJANGO_SECURE_PROXY_SSL_HEADER=1 (the proxy must set X-Forwarded-Proto).
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", True)
    SECURE_HSTS_SECONDS = int(env("DJANGO_SECURE_HSTS_SECONDS", "31536000"))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("DJANGO_SECURE_HSTS_PRELOAD", True)
    if env_bool("DJANGO_SECURE_PROXY_SSL_HEADER", False):
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "conversations": {"handlers": ["console"], "level": env("CHAT_LOG_LEVEL", "INFO")},
        "chatsite": {"handlers": ["console"], "level": env("CHAT_LOG_LEVEL", "INFO")},
        # httpx logs every request URL at INFO; keep it quiet.
        "httpx": {"level": "WARNING"},
        "httpx2": {"level": "WARNING"},  # the MCP SDK's HTTP client
        "mcp": {"level": "WARNING"},
    },
}

# --- the chat -----------------------------------------------------------------

# Empty means the bundled offline demo model (conversations.demo).
OPENAI_BASE_URL = env("OPENAI_BASE_URL")
OPENAI_API_KEY = env("OPENAI_API_KEY")
# How fast the offline demo model writes (words per second).
CHAT_DEMO_TOKENS_PER_SECOND = env_float("CHAT_DEMO_TOKENS_PER_SECOND", 60.0)
# Empty means the upstream's first model (or the demo model).
CHAT_MODEL = env("CHAT_MODEL")
# Seconds the upstream's model list (GET /models), offered in each conversation, is kept.
CHAT_MODELS_TTL = env_float("CHAT_MODELS_TTL", 300.0)
# The default server's name above its models, once the admin has added endpoints.
OPENAI_ENDPOINT_NAME = env("OPENAI_ENDPOINT_NAME", "Default")
# Seconds a process keeps the endpoints configured in the admin before reading them again
# (a change made in this process applies at once).
CHAT_ENDPOINTS_TTL = env_float("CHAT_ENDPOINTS_TTL", 10.0)
# Fernet keys (comma-separated) that encrypt the endpoints' API keys: the first encrypts,
# every one decrypts, so a new key goes first and `manage.py rotate_endpoint_keys`
# re-encrypts. Empty: a key derived from DJANGO_SECRET_KEY.
CHAT_ENCRYPTION_KEYS = [key for key in env("CHAT_ENCRYPTION_KEYS").split(",") if key.strip()]
# After a conversation's first reply, ask its model for a short title (one more upstream
# request, counted in CHAT_MESSAGES_PER_MINUTE); off, or failing, the first words stay.
CHAT_GENERATE_TITLES = env_bool("CHAT_GENERATE_TITLES", True)
# Seconds without a byte from the upstream before a reply is given up as interrupted.
CHAT_UPSTREAM_IDLE_TIMEOUT = env_float("CHAT_UPSTREAM_IDLE_TIMEOUT", 60.0)
# How upstreams are read: "httpcore" (httpx's HTTP on the site's asyncio sockets,
# conversations/upstream/network.py), "aiohttp" (aiohttp under httpx's API, transport.py)
# or "anyio" (httpx's default sockets).
CHAT_UPSTREAM_CLIENT = env("CHAT_UPSTREAM_CLIENT", "httpcore")
# Frames to browsers: the first text of a reply goes at once; after that, text is merged
# over a spell that grows with the replies streaming in the process (PER_REPLY seconds
# each), between MIN and MAX, so a lone reply is near real time and a busy process
# sends a bounded number of frames per second.
CHAT_FLUSH_MIN_INTERVAL = env_float("CHAT_FLUSH_MIN_INTERVAL", 0.005)
CHAT_FLUSH_MAX_INTERVAL = env_float("CHAT_FLUSH_MAX_INTERVAL", 0.1)
CHAT_FLUSH_INTERVAL_PER_REPLY = env_float("CHAT_FLUSH_INTERVAL_PER_REPLY", 0.0005)
# A user message longer than this (characters) is refused before anything is stored.
CHAT_MAX_MESSAGE_CHARS = int(env("CHAT_MAX_MESSAGE_CHARS", "32000"))
# Imports (conversations/imports.py): the largest file accepted, in bytes, and the seconds
# after which an import whose row has not moved is taken to have lost its process.
CHAT_IMPORT_MAX_BYTES = int(env("CHAT_IMPORT_MAX_BYTES", str(200 * 1024 * 1024)))
CHAT_IMPORT_STALE_AFTER = env_float("CHAT_IMPORT_STALE_AFTER", 900.0)
# No reply runs longer than this many seconds in all (retries included).
CHAT_REPLY_TIMEOUT = env_float("CHAT_REPLY_TIMEOUT", 600.0)
# A busy or failing upstream (408, 409, 429, 5xx, no connection) is retried before
# the first token only: at most this many attempts, waiting at most this long in all.
CHAT_RETRY_ATTEMPTS = int(env("CHAT_RETRY_ATTEMPTS", "4"))
CHAT_RETRY_BASE_DELAY = env_float("CHAT_RETRY_BASE_DELAY", 1.0)
CHAT_RETRY_MAX_WAIT = env_float("CHAT_RETRY_MAX_WAIT", 30.0)
# A streaming reply saves its text this often (seconds), so a crash loses at most that.
CHAT_CHECKPOINT_INTERVAL = env_float("CHAT_CHECKPOINT_INTERVAL", 2.0)
# A streaming row not checkpointed for this long has lost its process: it is interrupted.
CHAT_ORPHAN_AFTER = env_float("CHAT_ORPHAN_AFTER", 10.0)
# Reasoning is never sent back upstream, unless the server wants it (as reasoning_content).
CHAT_SEND_REASONING = env_bool("CHAT_SEND_REASONING", False)
# Per user: messages per minute, and replies being written at once.
CHAT_MESSAGES_PER_MINUTE = int(env("CHAT_MESSAGES_PER_MINUTE", "20"))
CHAT_CONCURRENT_REPLIES = int(env("CHAT_CONCURRENT_REPLIES", "3"))
# Per socket: actions a second on average (four times as many at once); per user: open
# sockets in one process.
CHAT_SOCKET_ACTIONS_PER_SECOND = env_float("CHAT_SOCKET_ACTIONS_PER_SECOND", 5.0)
CHAT_SOCKETS_PER_USER = int(env("CHAT_SOCKETS_PER_USER", "20"))
# Per user, over all their sockets: syncs (a page catching up) a second on average.
CHAT_SYNCS_PER_SECOND = env_float("CHAT_SYNCS_PER_SECOND", 2.0)
# Per socket: characters queued once the connection's send buffer is full, before the
# socket is closed as too slow (its page reconnects and catches up).
CHAT_SOCKET_BACKLOG_BYTES = int(env("CHAT_SOCKET_BACKLOG_BYTES", str(4 * 1024 * 1024)))
# Whether people can create their own accounts (otherwise an administrator does).
# Tools for the model from MCP servers: a JSON file in the common `mcpServers` format.
# Empty means the site's own small server (current time, calculator); "off" means none.
CHAT_MCP_CONFIG = env("CHAT_MCP_CONFIG")
# Seconds a tool call may run, and the characters of its result the model gets back.
CHAT_TOOL_TIMEOUT = env_float("CHAT_TOOL_TIMEOUT", 30.0)
CHAT_TOOL_MAX_RESULT_CHARS = int(env("CHAT_TOOL_MAX_RESULT_CHARS", "20000"))
# Upstream requests of one reply that may end in tool calls; the next one is offered none.
CHAT_TOOL_MAX_ROUNDS = int(env("CHAT_TOOL_MAX_ROUNDS", "8"))
# Seconds a call that asks the user first waits for Allow or Deny before it is denied.
CHAT_TOOL_CONFIRM_TIMEOUT = env_float("CHAT_TOOL_CONFIRM_TIMEOUT", 300.0)
# Seconds to open an MCP server's session, and between attempts at one that failed.
CHAT_TOOL_CONNECT_TIMEOUT = env_float("CHAT_TOOL_CONNECT_TIMEOUT", 10.0)
CHAT_TOOL_RETRY_INTERVAL = env_float("CHAT_TOOL_RETRY_INTERVAL", 5.0)

CHAT_ALLOW_SIGNUP = env_bool("CHAT_ALLOW_SIGNUP", False)
# Failed logins within the window (seconds), per account (username, case-insensitively)
# and per client address, counted in the database (so across processes). Past either
# limit even the right password is refused until enough of them are older than the
# window (conversations.throttling). 0 turns a limit off.
CHAT_LOGIN_FAILURES = int(env("CHAT_LOGIN_FAILURES", "5"))
CHAT_LOGIN_FAILURES_PER_ADDRESS = int(env("CHAT_LOGIN_FAILURES_PER_ADDRESS", "20"))
CHAT_LOGIN_WINDOW = env_float("CHAT_LOGIN_WINDOW", 900.0)
