# The app server image used by docker-compose.yml.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p tenant-router-server --bin tenant-router

FROM debian:bookworm-slim
RUN useradd --system --home /app tenant-router && mkdir -p /app/data && chown tenant-router /app/data
WORKDIR /app
COPY --from=build /src/target/release/tenant-router /usr/local/bin/tenant-router
COPY tenant-config ./tenant-config
USER tenant-router
EXPOSE 9500 9501
CMD ["tenant-router", "serve"]
