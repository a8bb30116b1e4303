# syntax=docker/dockerfile:1
# streamrec worker / trainer image. Production talks to Apache Kafka and Redis from
# docker-compose.yml; the embedded stack extras are not installed here.
#
# Two stages: the builder compiles whatever has no binary wheel (it has build-essential)
# into wheels at the versions constraints.txt pins; the runtime stage installs those
# wheels and nothing else, so it carries no compiler.
FROM python:3.11.7-slim-bookworm AS builder

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY constraints.txt pyproject.toml README.md ./
COPY stream ./stream
COPY models ./models
COPY state ./state
COPY producers ./producers
RUN pip wheel --constraint constraints.txt --wheel-dir /wheels .

FROM python:3.11.7-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# The wheels are mounted for this one step only: they never become a layer of the image.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels streamrec

# The registry is a shared volume; workers watch its CURRENT pointers for hot swaps.
# numba caches compiled kernels beside the source or under $HOME; `nobody` can write
# neither (site-packages is root's, its home does not exist): every command keeps them
# in the volume, where the worker would by default, so a restart loads them instead of
# compiling. tests/integration/test_image_user.py runs the entry point this way.
ENV STREAMREC_HOME=/data STREAMREC_MODEL_DIR=/data/models NUMBA_CACHE_DIR=/data/cache/numba
RUN mkdir -p /data && chown nobody:nogroup /data
VOLUME ["/data"]
USER nobody
ENTRYPOINT ["streamrec"]
CMD ["worker"]
