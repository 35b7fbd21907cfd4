# syntax=docker/dockerfile:1
# ipledger-server, the allocator. Build from the repository root:
#   docker build -f deploy/docker/ipledger-server.Dockerfile --build-arg VERSION=$(make version) \
#     --build-arg COMMIT=$(git rev-parse HEAD) --build-arg DATE=$(git log -1 --format=%cI) \
#     -t <registry>/ipledger/ipledger-server:v0.1.0 .
# Static binary (CGO_ENABLED=0) on distroless static as uid 65532: no shell, no package manager,
# nothing to write (the Deployment mounts the root filesystem read-only).

# The builder's Go must be at least go.mod's `go` line (official images set GOTOOLCHAIN=local).
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
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=${TARGETOS} GOARCH=${TARGETARCH} \
    go build -trimpath -ldflags="-s -w -X github.com/ipledger/ipledger/internal/version.Version=${VERSION} \
      -X github.com/ipledger/ipledger/internal/version.Commit=${COMMIT} \
      -X github.com/ipledger/ipledger/internal/version.Date=${DATE}" \
      -o /out/ipledger-server ./server/cmd/ipledger-server

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/ipledger-server /usr/local/bin/ipledger-server
USER 65532:65532
# gRPC (NodeService, AdminService) and HTTP (/metrics, /healthz, /readyz, dashboard).
EXPOSE 7400 7401
ENTRYPOINT ["/usr/local/bin/ipledger-server"]
