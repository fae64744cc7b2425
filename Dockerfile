# syntax=docker/dockerfile:1
# Multi-arch (linux/amd64, linux/arm64): docker buildx build --platform linux/amd64,linux/arm64 .
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
COPY gateway gateway
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p gateway --bin sessiongate \
 && cp target/release/sessiongate /usr/local/bin/sessiongate

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 1000 --no-create-home --shell /usr/sbin/nologin sessiongate
COPY --from=build /usr/local/bin/sessiongate /usr/local/bin/sessiongate
COPY conf/sessiongate.toml /etc/sessiongate/sessiongate.toml
USER 1000
EXPOSE 8080 8000 9000 9090
# The admin listener binds loopback by default; publish it only with --admin 0.0.0.0:9090.
ENTRYPOINT ["/usr/local/bin/sessiongate"]
CMD ["--config", "/etc/sessiongate/sessiongate.toml"]
