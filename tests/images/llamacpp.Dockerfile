# llama.cpp's OpenAI-compatible server (llama-cpp-python's `llama_cpp.server`),
# as a model image: the venv built here (llama.cpp compiled with cmake, CPU
# only, generic x86-64), the Python it was made with, the system libraries
# they link, and the tiny GGUF models made here under the file names that
# examples/llamacpp-team's server config loads. Nothing is pulled: the files
# arrive through the `binaries` context, prepared by the test harness
# (tests/src/images/llamacpp.rs).
#
# The server reads its models from the config file named by the command
# (examples/llamacpp-team mounts it from a ConfigMap), and listens where
# HOST and PORT say: the injection sets them to the pod's loopback.
FROM scratch AS binaries

FROM scratch
ARG TARGETOS TARGETARCH VERSION=dev REVISION=unknown LLAMA_CPP_PYTHON_VERSION=unknown
COPY --from=binaries ${TARGETOS}/${TARGETARCH}/rootfs/ /
USER 65532:65532
# Read only: no bytecode written, nothing cached; HOME is the scratch /tmp.
ENV PATH=/usr/local/bin \
    LD_LIBRARY_PATH=/usr/local/lib \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    HOST=0.0.0.0 \
    PORT=8000
LABEL org.opencontainers.image.title="attach-llamacpp" \
      org.opencontainers.image.description="llama-cpp-python's OpenAI-compatible server, built from source, with tiny random-weight test models" \
      org.opencontainers.image.source="https://github.com/attach-dev/attach" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="${LLAMA_CPP_PYTHON_VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
EXPOSE 8000
ENTRYPOINT ["/usr/local/bin/python3", "-m", "llama_cpp.server"]
CMD ["--config_file", "/etc/llama-cpp/config.json"]
