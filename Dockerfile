# syntax=docker/dockerfile:1
# Multi-stage build: the server is installed into a virtualenv in the first stage, and only that
# virtualenv is copied into the runtime image: no compiler, no build tools, no wheels left in a
# layer, no dev-only packages (the embedded PostgreSQL of `make run` included); it runs as an
# unprivileged user. Versions come from constraints.txt, so two builds install the same.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY credbroker ./credbroker
RUN python -m venv --without-pip /opt/credbroker \
    && pip --python /opt/credbroker/bin/python install --no-cache-dir -c constraints.txt '.[server]'

FROM python:3.11-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin credbroker
COPY --from=build /opt/credbroker /opt/credbroker
USER 10001
ENV PATH=/opt/credbroker/bin:$PATH \
    CREDBROKER_LISTEN=0.0.0.0:50051 \
    CREDBROKER_LOG_FORMAT=json \
    PYTHONUNBUFFERED=1
EXPOSE 50051
ENTRYPOINT ["credbroker"]
CMD ["serve"]
