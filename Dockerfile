# svdq-server image. Build:   docker build -t svdq-serve .
# Run (GPU):   docker run --gpus all -p 50051:50051 -p 8000:8000 -p 9464:9464 svdq-serve
# Own model:   docker run --gpus all -v /path/to/models:/models -e SVDQ_MODEL=/models/x.gguf ... svdq-serve
# Build args:  BAKE_MODEL=0 leaves the default model out (mount one); CUDA_ARCH picks the kernels' target.
ARG CUDA_VERSION=13.0.1

# ---- build: the project's own install script, then the same CMake build CI runs ----
FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu24.04 AS build
ARG CUDA_ARCH=90a
ARG BAKE_MODEL=1
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends make ca-certificates && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN bash deploy/install-deps.sh \
 && SVDQ_SKIP_SETUP=1 make configure \
 && cmake -S . -B build -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCH} -DSVDQ_CUDA=ON \
 && cmake --build build --target svdq-server svdq-cli svdq_calibrate \
 && bash deploy/collect-runtime.sh build /opt/svdq \
 && mkdir -p /models \
 && if [ "$BAKE_MODEL" = 1 ]; then SVDQ_MODELS_DIR=/models bash deploy/fetch-model.sh; fi

# ---- runtime: CUDA runtime image, the binaries and their libraries, a non-root user ----
FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu24.04
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends libgomp1 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --create-home svdq
COPY --from=build /opt/svdq /opt/svdq
COPY --from=build --chown=svdq:svdq /models /models
ENV PATH=/opt/svdq/bin:$PATH \
    LD_LIBRARY_PATH=/opt/svdq/lib \
    SVDQ_MODEL=/models/SmolLM2-135M-Instruct.Q4_1.gguf \
    SVDQ_HOST=0.0.0.0 \
    SVDQ_PORT=50051 \
    SVDQ_HTTP_PORT=8000 \
    SVDQ_METRICS_HOST=0.0.0.0 \
    SVDQ_METRICS_PORT=9464 \
    SVDQ_SHUTDOWN_GRACE_SECONDS=30
USER svdq
VOLUME ["/models"]
EXPOSE 50051 8000 9464
# Readiness through gRPC health: exit 0 only when the model is loaded and serving.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
  CMD ["svdq-cli", "--addr", "127.0.0.1:50051", "health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["svdq-server"]
