FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY imshift ./imshift
COPY vendors ./vendors
COPY models ./models
COPY workers ./workers
COPY jobs ./jobs
RUN pip install --no-cache-dir .
ENTRYPOINT ["imshift"]
