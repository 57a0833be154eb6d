# relayguard in a container: slim Python, a non-root user, the store under /var/lib/relayguard.
FROM python:3.11-slim

RUN useradd --system --home-dir /var/lib/relayguard --create-home relayguard
WORKDIR /opt/relayguard
COPY pyproject.toml README.md ./
COPY src ./src
COPY policies ./policies
RUN pip install --no-cache-dir .

USER relayguard
ENV RELAYGUARD_SMTP__LISTEN=0.0.0.0:2525 \
    RELAYGUARD_WEB__LISTEN=0.0.0.0:8025 \
    RELAYGUARD_STORE__URL=sqlite:////var/lib/relayguard/relayguard.db \
    RELAYGUARD_POLICY__PATH=/opt/relayguard/policies/default.yaml
EXPOSE 2525 8025
CMD ["relayguard", "serve"]
