# syntax=docker/dockerfile:1
# sessiongate: build with the Rust toolchain, run on a slim image as a non-root user.
# Multi-arch (AgentCore runs arm64):
#   docker buildx build --platform linux/amd64,linux/arm64 -t sessiongate .
#   docker run -p 8080:8080 -p 8000:8000 -p 9000:9000 sessiongate
# The config lives at /etc/sessiongate/sessiongate.toml (mount yours over it; it reloads on
# change). The admin listener binds loopback inside the container (the health check uses it);
# publish it with --admin 0.0.0.0:9090 if Prometheus scrapes from outside.
FROM rust:1.95-slim-bookworm AS build
# cmake: Pingora's zlib-ng; pkg-config + g++ for the other -sys crates.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake pkg-config g++ make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY conf conf
COPY auth auth
COPY routing routing
COPY agent agent
COPY egress egress
COPY gateway gateway
COPY vendor vendor
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p gateway --bin sessiongate \
 && cp target/release/sessiongate /usr/local/bin/sessiongate

FROM debian:bookworm-slim
# bubblewrap + slirp4netns: the `sandbox` provider and its egress (the container must allow user namespaces, e.g. Docker's
# --security-opt seccomp=unconfined --security-opt apparmor=unconfined). The `microvm` provider
# needs qemu-system-x86 and a guest from scripts/build-guest: add them in an image of your own.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates bubblewrap slirp4netns \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 1000 --no-create-home --shell /usr/sbin/nologin sessiongate
COPY --from=build /usr/local/bin/sessiongate /usr/local/bin/sessiongate
COPY conf/sessiongate.toml /etc/sessiongate/sessiongate.toml
USER 1000
EXPOSE 8080 8000 9000 9090
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/sessiongate", "health", "--admin", "127.0.0.1:9090"]
ENTRYPOINT ["/usr/local/bin/sessiongate"]
CMD ["--config", "/etc/sessiongate/sessiongate.toml"]
