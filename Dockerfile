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

# LightGBM (the trainer's boosted trees) links the system's OpenMP runtime.
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# The wheels are mounted for this one step only: they never become a layer of the image.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels streamrec

# numba compiles the ranking kernels at their first call and caches them: they are
# compiled here, into the image, so that a container's first start loads them. The image
# runs on CPUs other than the build's and numba keys its cache by the CPU model: generic
# x86-64 code, for the build and every run alike. The cache is nobody's, so that
# a kernel for argument types not met here is cached too (in the container's layer).
ENV NUMBA_CACHE_DIR=/opt/streamrec/numba NUMBA_CPU_NAME=generic
RUN mkdir -p /opt/streamrec/numba && streamrec warm \
    && chown -R nobody:nogroup /opt/streamrec

# The registry is a shared volume; workers watch its CURRENT pointers for hot swaps.
# tests/integration/test_image_user.py runs the entry point as this user, with this ENV.
ENV STREAMREC_HOME=/data STREAMREC_MODEL_DIR=/data/models
RUN mkdir -p /data && chown nobody:nogroup /data
USER nobody
# The cache as the runtime user finds it: the build fails if a kernel would be compiled.
RUN streamrec warm --check
VOLUME ["/data"]
ENTRYPOINT ["streamrec"]
CMD ["worker"]
