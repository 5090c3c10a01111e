# The test node's sandbox image: tests/tools/pause, a static Go binary that
# holds a pod's namespaces and reaps zombies. Built from the `binaries`
# context only, so the node pulls nothing from a public registry.
FROM scratch AS binaries

FROM scratch
ARG TARGETOS TARGETARCH VERSION=dev REVISION=unknown
COPY --from=binaries --chmod=0555 ${TARGETOS}/${TARGETARCH}/pause /pause
USER 65535:65535
LABEL org.opencontainers.image.title="attach-test-pause" \
      org.opencontainers.image.source="https://github.com/attach-dev/attach" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
ENTRYPOINT ["/pause"]
