# glmflash in a container: JupyterLab on 8888, web page + API on 8080 (./start.sh --docker builds
# and runs it). Everything is installed here, at build time; nothing is downloaded at start except
# the checkpoint, into the Hugging Face cache volume (set HF_HUB_OFFLINE=1 to forbid that).
#   docker build -t glmflash .
#   docker run --gpus all -p 8080:8080 -p 8888:8888 -v glmflash-hf-cache:/home/glmflash/.cache/huggingface glmflash
FROM python:3.12.8-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/home/glmflash/.cache/huggingface \
    GLMFLASH_CACHE_DIR=/home/glmflash/.cache/glmflash \
    GLMFLASH_HOST=0.0.0.0

# A font with Latin and Chinese glyphs for the labels of drawn boxes (glmflash/grounding/draw.py).
RUN apt-get update \
    && apt-get install -y --no-install-recommends fonts-wqy-microhei=0.2.0-beta-3.1 \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 --shell /bin/bash glmflash \
    && mkdir -p /home/glmflash/.cache/huggingface /home/glmflash/.cache/glmflash \
    && chown -R glmflash:glmflash /home/glmflash/.cache

WORKDIR /app
# Dependencies first: this layer is rebuilt only when requirements.txt changes.
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

COPY pyproject.toml README.md app.py start.sh ./
COPY scripts ./scripts
COPY glmflash ./glmflash
RUN pip install --no-cache-dir --no-deps . \
    && python -m glmflash --help > /dev/null
COPY --chown=glmflash:glmflash notebooks ./notebooks

USER 1000:1000
EXPOSE 8080 8888
VOLUME ["/home/glmflash/.cache/huggingface"]
# Loading (or first downloading ~20 GB of) the model takes minutes: failures count only after that.
# probe.py asks /health, which answers 503 once the decode loop has failed for good (engine.health()).
HEALTHCHECK --interval=30s --timeout=10s --start-period=20m --retries=3 \
    CMD ["python", "/app/scripts/probe.py"]
ENTRYPOINT ["/app/start.sh", "--container"]
