# syntax=docker/dockerfile:1
# Multi-stage build: wheels are built in the first stage; the runtime image has no compiler,
# no build tools and runs as an unprivileged user.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY credbroker ./credbroker
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin credbroker
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 10001
ENV CREDBROKER_LISTEN=0.0.0.0:50051 \
    CREDBROKER_LOG_FORMAT=json \
    PYTHONUNBUFFERED=1
EXPOSE 50051
ENTRYPOINT ["credbroker"]
CMD ["serve"]
