# openai-model-rerouter. Builds on a normal machine from the public Python image, and offline from
# a local one (--build-arg BASE_IMAGE=...): no "syntax" line and no BuildKit-only features.
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt

RUN useradd --create-home --uid 10001 rerouter \
    && mkdir /data && chown rerouter /data
COPY rerouter_addon.py logstore.py pglogstore.py ./
COPY rerouter/ rerouter/
COPY dashboard/ dashboard/

# mitmproxy keeps its CA files in ~/.mitmproxy, which is writable for this user.
ENV LISTEN_HOST=0.0.0.0 LISTEN_PORT=1234 DB_PATH=/data/requests.db
VOLUME /data
USER rerouter
EXPOSE 1234
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, socket; socket.create_connection(('127.0.0.1', int(os.environ['LISTEN_PORT'])), 3).close()"]
# Arguments after the image name are appended as extra mitmdump arguments.
ENTRYPOINT ["python", "rerouter_addon.py"]
