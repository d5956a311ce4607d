# modalsynth as a BIDS App container: docker run --rm -v /data/ds:/data:ro -v /data/out:/out IMAGE /data /out participant
# Not built or tested here (the build machine has no container runtime); it follows the README's set-up.
FROM python:3.11-slim
# PyTorch's CPU wheel keeps the image small; leave this line out to get PyPI's CUDA build instead
RUN pip install --no-cache-dir "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
COPY . /opt/modalsynth
WORKDIR /opt/modalsynth
# the set-up script (keeps the torch above), the skull stripper for raw scans, and the official BIDS validator
RUN ./scripts/setup.sh && pip install --no-cache-dir -e ".[strip]" "bids-validator-deno>=2.0"
ENTRYPOINT ["modalsynth", "bids"]
