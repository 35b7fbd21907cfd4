# syntax=docker/dockerfile:1
# ipledgerctl, the admin CLI, for running inside the cluster, e.g.
#   kubectl -n kube-system run ipledgerctl --rm -it --restart=Never \
#     --image=<registry>/ipledger/ipledgerctl:v0.1.0 -- --server=ipledger-server.kube-system.svc:7400 status
# Build from the repository root:
#   docker build -f deploy/docker/ipledgerctl.Dockerfile --build-arg VERSION=$(make version) \
#     --build-arg COMMIT=$(git rev-parse HEAD) --build-arg DATE=$(git log -1 --format=%cI) \
#     -t <registry>/ipledger/ipledgerctl:v0.1.0 .

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
      -o /out/ipledgerctl ./server/cmd/ipledgerctl

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/ipledgerctl /usr/local/bin/ipledgerctl
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/ipledgerctl"]
