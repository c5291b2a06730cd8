# One image for the agent, the control plane and the CLI: they are one binary, `nodemesh`
# (`nodemesh agent`, `nodemesh controlplane`, `nodemesh status`, ...). The chart runs it as
# both the DaemonSet and the Deployment.
#
#   docker build -t ghcr.io/nodemesh/nodemesh:0.1.0 .
#
# The build stage pins what `cargo xtask setup` pins (xtask/src/setup.rs): the eBPF programs
# are built with a nightly whose LLVM major (22) is bpf-linker 0.13.0's.

FROM debian:bookworm AS build
ARG RUST=1.95.0
ARG NIGHTLY=nightly-2026-05-20
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends ca-certificates curl build-essential pkg-config llvm-22-dev musl-tools \
 && rm -rf /var/lib/apt/lists/*
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:$PATH
RUN curl -sSf https://sh.rustup.rs | sh -s -- -y -q --profile minimal --default-toolchain "$RUST" \
 && rustup target add x86_64-unknown-linux-musl \
 && rustup toolchain install "$NIGHTLY" --profile minimal --component rust-src \
 && rustup toolchain link nightly "$(rustup run "$NIGHTLY" rustc --print sysroot)" \
 && LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --version 0.13.0 --locked --no-default-features --features llvm-22
WORKDIR /src
COPY . .
# Static (musl, static-pie): the image needs no particular libc, and the same binary runs on
# any node. The tests passed with it (NODEMESH_BIN=target/x86_64-unknown-linux-musl/release/nodemesh)
# before release builds took fat LTO; the glibc LTO build passes them (2026-12-02).
RUN cargo build --release --locked --target x86_64-unknown-linux-musl -p nodemesh \
 && strip -o /nodemesh target/x86_64-unknown-linux-musl/release/nodemesh

# Debian's slim image rather than an empty one: the chart's optional bpffs step runs `mount`
# and `mountpoint` from it. The binary itself needs nothing from it.
FROM debian:bookworm-slim
COPY --from=build /nodemesh /usr/local/bin/nodemesh
ENTRYPOINT ["/usr/local/bin/nodemesh"]
