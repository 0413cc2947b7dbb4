# The qta-monitor image: one image for the worker (`serve`), the topics job and the demo producer (`replay`).
# Dependencies come from requirements.lock (scripts/lock.sh: the exact versions the tests ran with, with
# hashes), so two builds install the same bytes. The lock pins PyPI's torch, the CUDA build for Linux x86_64
# with its nvidia-* wheels: a bigger image, but the same one runs the CPU profile (workers/cpu.toml) and the
# GPU profile (workers/gpu.toml, deploy/k8s/gpu) on a node with the NVIDIA container runtime.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    HF_HOME=/tmp/hf

# tesseract reads the text of typographic (FigStep-style) images.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tesseract-ocr \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# The locked dependencies first (their own layer: code changes do not re-install them), then the package
# itself without resolving anything again.
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock

COPY pyproject.toml README.md ./
COPY monitor ./monitor
RUN pip install --no-deps .

# Read at run time relative to the working directory (settings.topics.definitions_dir).
COPY topics ./topics

USER 10001
EXPOSE 9464
ENTRYPOINT ["qta-monitor"]
CMD ["serve"]
