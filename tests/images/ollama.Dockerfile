# The real Ollama server, as a model image: the binary built here from its Go
# module (with cgo: the C and C++ runtime libraries it links come with it,
# from the machine that built it) and a model store holding the tiny models
# made here, under the names the examples use. Nothing is pulled: the files
# arrive through the `binaries` context, prepared by the test harness
# (tests/src/images/ollama.rs).
FROM scratch AS binaries

FROM scratch
ARG TARGETOS TARGETARCH VERSION=dev REVISION=unknown OLLAMA_VERSION=unknown
COPY --from=binaries --chown=65532:65532 ${TARGETOS}/${TARGETARCH}/rootfs/ /
USER 65532:65532
# HOME holds the key Ollama makes at its first start; the store is read
# only (no pulls, no pruning).
ENV HOME=/home/ollama \
    OLLAMA_MODELS=/models \
    OLLAMA_HOST=0.0.0.0:11434 \
    OLLAMA_NOPRUNE=1 \
    OLLAMA_KEEP_ALIVE=1h \
    OLLAMA_CONTEXT_LENGTH=2048
LABEL org.opencontainers.image.title="attach-ollama" \
      org.opencontainers.image.description="Ollama built from source with tiny random-weight test models (llama3.2:1b, llama3.1:70b, nomic-embed-text)" \
      org.opencontainers.image.source="https://github.com/attach-dev/attach" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="${OLLAMA_VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
EXPOSE 11434
ENTRYPOINT ["/bin/ollama"]
CMD ["serve"]
