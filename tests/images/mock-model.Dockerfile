# The tests' model stand-in (attach-mock-model: Ollama and OpenAI shapes,
# bound where the injection rebinds it: OLLAMA_HOST, or vLLM's --host/--port)
# and the in-cluster test client (attach-pod-client), static, on scratch.
# Built from the `binaries` context only (see sidecar/Dockerfile).
FROM scratch AS binaries

FROM scratch
ARG TARGETOS TARGETARCH VERSION=dev REVISION=unknown
COPY --from=binaries --chmod=0555 ${TARGETOS}/${TARGETARCH}/attach-mock-model ${TARGETOS}/${TARGETARCH}/attach-pod-client /
USER 65532:65532
LABEL org.opencontainers.image.title="attach-mock-model" \
      org.opencontainers.image.description="Test stand-in for a model server, and an in-cluster HTTP test client" \
      org.opencontainers.image.source="https://github.com/attach-dev/attach" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
ENTRYPOINT ["/attach-mock-model"]
