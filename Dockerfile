# Both binaries (postern, postern-operator) in one image, running as a non-root user with no shell.
# Build: docker build -t postern:dev .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin postern --bin postern-operator

# distroless/cc: glibc, CA certificates, no shell, user 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/postern /src/target/release/postern-operator /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/postern"]
