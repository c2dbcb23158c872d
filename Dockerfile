# The app's image: the runtime requirements only (no test tools), run as a non-root user.
# docker-compose.yml builds it for the web, worker and beat services.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# Every package pinned (requirements.txt is compiled from requirements.in).
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .
# Static files are collected at build time: with DEBUG off, WhiteNoise serves them.
RUN SECRET_KEY=collectstatic-only DEBUG=false python manage.py collectstatic --noinput --verbosity 0 \
    && useradd --create-home --uid 10001 --user-group app

USER app
EXPOSE 8000
# WEB_PROCESSES daphne processes on one port (llmbacker/serve.py).
CMD ["python", "-m", "llmbacker.serve", "-b", "0.0.0.0", "-p", "8000"]
