# syntax=docker/dockerfile:1
# ipledger-agent, the node agent. The image also carries what the DaemonSet's init container
# installs on the node: the CNI plugin (installed as /opt/cni/bin/ipledger), the conflist
# (installed in /etc/cni/net.d) and the installer itself. Build from the repository root:
#   docker build -f deploy/docker/ipledger-agent.Dockerfile --build-arg VERSION=$(make version) \
#     --build-arg COMMIT=$(git rev-parse HEAD) --build-arg DATE=$(git log -1 --format=%cI) \
#     -t <registry>/ipledger/ipledger-agent:v0.1.0 .
#
# Runs as root (USER 0) on distroless static: the agent manages links, routes and rules in the
# node's network namespace with CAP_NET_ADMIN, and Kubernetes gives added capabilities only to
# uid 0 (a non-root user would need file capabilities, which need extended attributes in the
# image layers, or ambient capabilities, which Kubernetes does not set). The DaemonSet drops every
# other capability, forbids privilege escalation and mounts the root filesystem read-only.

ARG GO_VERSION=1.26.8

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION}-bookworm AS build
ARG TARGETOS=linux
ARG TARGETARCH=amd64
ARG VERSION=dev
ARG COMMIT=unknown
ARG DATE=unknown
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
# -o with a directory: one binary per main package, named after its directory.
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    mkdir -p /out && \
    CGO_ENABLED=0 GOOS=${TARGETOS} GOARCH=${TARGETARCH} \
    go build -trimpath -ldflags="-s -w -X github.com/ipledger/ipledger/internal/version.Version=${VERSION} \
      -X github.com/ipledger/ipledger/internal/version.Commit=${COMMIT} \
      -X github.com/ipledger/ipledger/internal/version.Date=${DATE}" \
      -o /out/ ./agent/cmd/ipledger-agent ./cni/cmd/ipledger-cni ./deploy/cmd/ipledger-cni-install

FROM gcr.io/distroless/static-debian12
COPY --from=build /out/ipledger-agent /usr/local/bin/ipledger-agent
COPY --from=build /out/ipledger-cni-install /usr/local/bin/ipledger-cni-install
COPY --from=build /out/ipledger-cni /opt/ipledger/bin/ipledger-cni
COPY deploy/cni/10-ipledger.conflist /opt/ipledger/cni/10-ipledger.conflist
USER 0:0
# /metrics, /healthz, /v1/pool (the DaemonSet binds it to the node IP).
EXPOSE 61680
ENTRYPOINT ["/usr/local/bin/ipledger-agent"]
