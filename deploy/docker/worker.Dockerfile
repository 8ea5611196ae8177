# The tunefleet worker image, for GPU hosts with the NVIDIA Container Toolkit. Build it from the
# repository root (BuildKit, the default builder since Docker 23, also reads
# worker.Dockerfile.dockerignore beside this file):
#
#   docker build -f deploy/docker/worker.Dockerfile -t tunefleet-worker .
#
# NOTE: no CI job builds this file, and no test has run a worker in it on a GPU.

# The build links against the CUDA 13 build of torch 2.11.0 (the default wheel on PyPI), as
# scripts/bootstrap does on a workstation.
FROM rust:1.95.0-bookworm AS build

ARG TORCH_VERSION=2.11.0

RUN apt-get update \
    && apt-get install -y --no-install-recommends protobuf-compiler python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

# Installed before the sources are copied, so that a source change reuses this layer.
RUN python3 -m venv /opt/torch/.venv \
    && /opt/torch/.venv/bin/pip install --no-cache-dir "torch==${TORCH_VERSION}"

# The tch crate finds libtorch through the venv's python (as scripts/bootstrap sets up).
ENV LIBTORCH_USE_PYTORCH=1 \
    PATH=/opt/torch/.venv/bin:$PATH

WORKDIR /src
COPY . .

# The cache mounts keep crates and build outputs between builds, so everything the runtime
# needs is copied out to /stage in the same step. libtorch_cuda.so finds the CUDA libraries
# of the nvidia-* wheels through run paths relative to itself ($ORIGIN/../../nvidia/...), so
# torch/lib and nvidia/ keep their places under one site-packages directory. Headers and
# static libraries are only for building, so they are left out.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p tunefleet \
    && install -D -m 0755 target/release/tunefleet /stage/usr/local/bin/tunefleet \
    && site=$(python3 -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))') \
    && mkdir -p /stage/opt/torch/site-packages/torch \
    && cp -a "$site/torch/lib" /stage/opt/torch/site-packages/torch/lib \
    && cp -a "$site/nvidia" /stage/opt/torch/site-packages/nvidia \
    && rm -rf /stage/opt/torch/site-packages/nvidia/*/include \
    && find /stage/opt/torch/site-packages -name '*.a' -delete

# The base variant is enough: the torch wheels bring their own CUDA 13 libraries, and the
# image only needs the NVIDIA Container Toolkit's settings (NVIDIA_VISIBLE_DEVICES, the CUDA
# requirement it checks against the host's driver), which every nvidia/cuda image sets.
FROM nvidia/cuda:13.0.2-base-ubuntu24.04

RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/tunefleet \
        --shell /usr/sbin/nologin tunefleet \
    && install -d -o tunefleet -g tunefleet -m 0750 /var/lib/tunefleet

COPY --from=build /stage/ /

# The binary's built-in run path names the build stage's venv; LD_LIBRARY_PATH points it at
# the copied libraries instead. The last two entries keep the ones nvidia/cuda images set.
ENV LD_LIBRARY_PATH=/opt/torch/site-packages/torch/lib:/usr/local/nvidia/lib:/usr/local/nvidia/lib64 \
    TUNEFLEET_LOG=info

# The home directory is where CUDA keeps its kernel cache.
USER tunefleet
WORKDIR /var/lib/tunefleet
# On SIGTERM the worker stops taking trials and lets running ones finish for its grace period
# (30 s by default): stop the container with a longer timeout (docs/deploy.md).
STOPSIGNAL SIGTERM

ENTRYPOINT ["/usr/local/bin/tunefleet"]
CMD ["worker"]
