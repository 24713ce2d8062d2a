# The music sidecar, CPU only. Built by compose.yaml (`docker compose up --build`), or alone:
#   docker build -t music-sidecar .
#   docker run -p 8765:8765 -v /path/to/music:/music:ro -v sidecar-data:/data music-sidecar
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # librosa's numba functions cache their compiled code; site-packages is not writable at run time
    NUMBA_CACHE_DIR=/tmp/numba-cache \
    SIDECAR_DATA_DIR=/data \
    SIDECAR_MUSIC_DIR=/music \
    SIDECAR_HOST=0.0.0.0 \
    SIDECAR_PORT=8765

# Every install goes through constraints.txt, which pins torch==2.13.0. On PyPI that version for Linux is the
# CUDA build (gigabytes of nvidia-* wheels); the PyTorch CPU index serves the same version as 2.13.0+cpu,
# which `torch==2.13.0` matches (a local label like +cpu is ignored when the pin has none) and which pip
# prefers as the higher version. So the CPU index is named here, and only here: outside Docker the local
# CPU wheel is used.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

RUN useradd --create-home --uid 1000 sidecar \
    && mkdir -p /data /music \
    && chown sidecar:sidecar /data

WORKDIR /app

# Dependencies first, in their own layer, so that editing the code does not reinstall torch.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -c constraints.txt --extra-index-url "$TORCH_INDEX" -r /tmp/requirements.txt \
    && python -c "import torch; assert not torch.version.cuda, torch.__version__; print('torch', torch.__version__)"

COPY . .
RUN pip install --no-deps -c constraints.txt . \
    && rm -rf /app/build /app/*.egg-info

USER sidecar

# Bake the model weights into the image (into $SIDECAR_DATA_DIR/models, i.e. /data/models): the container
# then starts without reaching a package index. A named volume mounted on /data starts as a copy of this
# folder; `sidecar serve` prepares any weights that are still missing at start-up.
RUN sidecar setup

VOLUME ["/data"]
EXPOSE 8765

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('SIDECAR_PORT', '8765'), timeout=4)"

CMD ["sidecar", "serve"]
