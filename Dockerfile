# syntax=docker/dockerfile:1
#
# Images of the node and the operator, from one build of the workspace:
#
#   docker build --target ferrokv  -t REPOSITORY/ferrokv:vVERSION .
#   docker build --target operator -t REPOSITORY/ferrokv-operator:vVERSION .
#
# The operator runs a KVCluster's members from `<memberImage.repository>:v<version>` (chart value
# and spec.version, see operator/src/children.rs), so tag the node image with a leading `v`.
# Both images are Debian slim rather than distroless: operators and the e2e tests `kubectl exec`
# into members with /bin/sh. Both run as the unprivileged user 65532, the user the chart gives
# the operator's pod and the operator gives its members (with fsGroup 65532 for the volumes).
#
# Needs BuildKit (the default builder of Docker 23 and later) for the cache mounts, which keep
# cargo's registry and target directory between builds.

ARG RUST_VERSION=1.90
ARG DEBIAN_RELEASE=bookworm

FROM docker.io/library/rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
# etcd-client's build compiles etcd's .proto files, and so does the Raft crate's (node/raft/build.rs).
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The target directory is a cache mount, gone after this step: copy the binaries out of it.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --locked --release -p ferrokv-node -p ferrokv-operator \
    && mkdir -p /out \
    && cp target/release/ferrokv target/release/ferrokv-operator /out/

FROM docker.io/library/debian:${DEBIAN_RELEASE}-slim AS runtime
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 65532 ferrokv \
    && useradd --system --uid 65532 --gid 65532 --no-create-home \
        --home-dir /var/lib/ferrokv --shell /usr/sbin/nologin ferrokv

FROM runtime AS operator
COPY --from=build /out/ferrokv-operator /usr/local/bin/ferrokv-operator
USER 65532:65532
EXPOSE 8080
# The chart passes `run` and its flags as the container's args.
ENTRYPOINT ["ferrokv-operator"]
CMD ["run"]

FROM runtime AS ferrokv
COPY --from=build /out/ferrokv /usr/local/bin/ferrokv
# The operator mounts the member's volumes at these paths (operator/src/names.rs); outside
# Kubernetes, `docker run` without flags keeps its data in /var/lib/ferrokv/default.ferrokv.
RUN install -d -o 65532 -g 65532 -m 0750 \
        /var/lib/ferrokv /var/lib/ferrokv/data /var/lib/ferrokv/wal
WORKDIR /var/lib/ferrokv
USER 65532:65532
EXPOSE 2379 2380
ENTRYPOINT ["ferrokv"]
