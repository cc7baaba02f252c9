# Multi-stage build of both services. librdkafka is built from rdkafka's bundled source
# and linked statically; OpenSSL comes from Debian so SASL_SSL clusters work.
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential zlib1g-dev libssl-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p command-ingest -p projector -p ledger-cli \
 && cp target/release/command-ingest target/release/projector target/release/ledger /usr/local/bin/

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data ledger \
 && mkdir -p /data && chown ledger /data
COPY --from=build /usr/local/bin/command-ingest /usr/local/bin/projector /usr/local/bin/ledger /usr/local/bin/
USER ledger
WORKDIR /data
# Each service's command line is set by docker-compose.yml.
CMD ["command-ingest", "--help"]
