# syntax=docker/dockerfile:1
#
# One image for every notifier process: `notifier worker`, `notifier api`,
# `notifier db upgrade`, ... (see docker-compose.yml). It holds the core and every
# channel adapter under adapters/, installed as wheels, and the default config/.
# No sources, tests or dev dependencies, and no provider simulators (simulators/): the
# demo is a development tool (`./dev demo`), so `notifier demo` is not in this image.

# --- build: wheels of notifier, its adapters and all their dependencies -------------
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml requirements.lock ./
COPY notifier/ ./notifier/
COPY adapters/ ./adapters/

# The shell expands ./adapters/*/ to one directory per adapter distribution
# (notifier-email, notifier-portal, ...). pip resolves the adapters' dependency on
# "notifier" to the local project given as ".", so nothing is fetched by that name.
# requirements.lock pins every dependency to the versions the tests ran with.
RUN pip wheel --wheel-dir /wheels --constraint requirements.lock . ./adapters/*/

# --- runtime ----------------------------------------------------------------------------
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NOTIFIER_CONFIG_DIR=/app/config

RUN groupadd --system --gid 10001 notifier \
    && useradd --system --uid 10001 --gid notifier --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin notifier

# Install from the build stage's wheels only (no index): the same set that was resolved
# there. The bind mount keeps the wheels out of the image's layers.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels /wheels/*.whl

# Settings (notifier.toml), routing rules and message templates. Read-only for the
# service user; mount a volume over /app/config to change them without a rebuild.
WORKDIR /app
COPY config/ ./config/

USER notifier:notifier
EXPOSE 8000

CMD ["notifier", "api", "--host", "0.0.0.0", "--port", "8000"]
