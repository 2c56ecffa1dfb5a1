# The app API server on Cloud Run (the /v1 API, the Stripe webhook, auto top-ups): the released wheel only.
# deploy-webhook.sh copies this file as Dockerfile next to the wheel and deploys that directory.
FROM python:3.12-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY *.whl /tmp/
RUN for wheel in /tmp/*.whl; do pip install --no-cache-dir "$wheel[all]"; done && rm /tmp/*.whl
USER nobody
# Cloud Run sets PORT; /v1 routes check a Firebase ID token, /stripe/webhook Stripe's signature.
CMD ["sh", "-c", "exec chargectl app serve --host 0.0.0.0 --port \"${PORT:-8080}\""]
