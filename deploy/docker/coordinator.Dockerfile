# The tunefleet coordinator image. Build it from the repository root (BuildKit, the default
# builder since Docker 23, also reads coordinator.Dockerfile.dockerignore beside this file):
#
#   docker build -f deploy/docker/coordinator.Dockerfile -t tunefleet-coordinator .
#
# NOTE: no CI job builds this file, so a change to it is untested until someone builds it.

# tunefleet is one binary that also contains the worker's trainer, so even the coordinator
# links against libtorch (torch 2.11.0's, through the tch crate). This image takes libtorch
# from the CPU-only torch wheel: the coordinator never uses a GPU, and linking the CUDA build
# would make the image carry its roughly 4 GB of CUDA libraries, which libtorch_cuda loads at
# start.
FROM rust:1.95.0-bookworm AS build

ARG TORCH_VERSION=2.11.0

RUN apt-get update \
    && apt-get install -y --no-install-recommends protobuf-compiler python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

# Installed before the sources are copied, so that a source change reuses this layer.
RUN python3 -m venv /opt/torch/.venv \
    && /opt/torch/.venv/bin/pip install --no-cache-dir \
        --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}"

# The tch crate finds libtorch through the venv's python (as scripts/bootstrap sets up).
ENV LIBTORCH_USE_PYTORCH=1 \
    PATH=/opt/torch/.venv/bin:$PATH

WORKDIR /src
COPY . .

# The cache mounts keep crates and build outputs between builds, so the binary and libtorch
# are copied out to /stage in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p tunefleet \
    && install -D -m 0755 target/release/tunefleet /stage/usr/local/bin/tunefleet \
    && torch_dir=$(python3 -c 'import os, torch; print(os.path.dirname(torch.__file__))') \
    && mkdir -p /stage/opt/torch \
    && cp -a "$torch_dir/lib" /stage/opt/torch/lib

FROM debian:12.11-slim

# libgomp1: libtorch_cpu's OpenMP runtime, in case the wheel does not bundle it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/tunefleet \
        --shell /usr/sbin/nologin tunefleet \
    && install -d -o tunefleet -g tunefleet -m 0750 /var/lib/tunefleet

COPY --from=build /stage/ /

# The binary's built-in run path names the build stage's venv; LD_LIBRARY_PATH points it at
# the copied libraries instead. The coordinator listens on every interface of the container, so
# it starts only with TLS, a client CA and tokens set (docs/security.md); publish the port on a
# private address only (docs/deploy.md).
ENV LD_LIBRARY_PATH=/opt/torch/lib \
    TUNEFLEET_LISTEN=0.0.0.0:7800 \
    TUNEFLEET_DATA_DIR=/var/lib/tunefleet \
    TUNEFLEET_LOG=info

USER tunefleet
WORKDIR /var/lib/tunefleet
VOLUME ["/var/lib/tunefleet"]
EXPOSE 7800
STOPSIGNAL SIGTERM

ENTRYPOINT ["/usr/local/bin/tunefleet"]
CMD ["coordinator"]
