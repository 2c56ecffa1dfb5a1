# The payments webhook on Cloud Run: the released chargectl wheel and nothing else.
# deploy-webhook.sh copies this file as Dockerfile next to the wheel and deploys that directory.
FROM python:3.12-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY *.whl /tmp/
RUN for wheel in /tmp/*.whl; do pip install --no-cache-dir "$wheel[all]"; done && rm /tmp/*.whl
USER nobody
# Cloud Run sets PORT; the webhook verifies Stripe's signature on every request.
CMD ["sh", "-c", "exec chargectl payments webhook --host 0.0.0.0 --port \"${PORT:-8080}\""]
