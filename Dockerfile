# Fleet: all five binaries in one image.
#   docker build -t fleet .
#   docker run --rm fleet                      # prints fleetctl help
#   docker run --rm fleet fleet-submitter ...  # run a service (see docker-compose.yml)

# ---- build: release binaries of the whole workspace
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins \
 && mkdir -p /out \
 && for bin in fleet-submitter fleet-dispatcher fleet-executor fleet-collector fleetctl; do \
        install -m 0755 "target/release/$bin" "/out/$bin" || exit 1; \
    done

# ---- runtime
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates coreutils tini \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --create-home --home-dir /home/fleet --shell /usr/sbin/nologin --uid 10001 --user-group fleet
COPY --from=build /out/ /usr/local/bin/
USER fleet
WORKDIR /home/fleet
ENV RUST_LOG=info
# submitter (API), dispatcher, collector; executors use FLEET_HTTP__ADDR as configured.
EXPOSE 7070 7071 7072
# tini: PID 1 forwards signals and reaps the processes the executor runs.
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["fleetctl", "--help"]
