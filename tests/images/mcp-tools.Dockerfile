# The tests' MCP server (tests/tools/mcp/server.py, made with the official
# MCP Python SDK) as an image: the MCP SDK venv built here, the Python it was
# made with, and the system libraries they link. Nothing is pulled: the
# files arrive through the `binaries` context, prepared by the test harness
# (tests/src/images/mcp_tools.rs). It serves Streamable HTTP at /mcp (and
# /healthz) where HOST and PORT say: the injection sets them to the pod's
# loopback.
FROM scratch AS binaries

FROM scratch
ARG TARGETOS TARGETARCH VERSION=dev REVISION=unknown
COPY --from=binaries ${TARGETOS}/${TARGETARCH}/rootfs/ /
USER 65532:65532
ENV PATH=/usr/local/bin \
    LD_LIBRARY_PATH=/usr/local/lib \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    HOST=0.0.0.0 \
    PORT=8000
LABEL org.opencontainers.image.title="attach-mcp-tools" \
      org.opencontainers.image.description="An MCP server made with the official MCP Python SDK, for attach's tests" \
      org.opencontainers.image.source="https://github.com/attach-dev/attach" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
EXPOSE 8000
ENTRYPOINT ["/usr/local/bin/python3", "/app/server.py"]
