"""Acme's jobs. The image names `acme_jobs.jobs` in JOBFLEET_JOBS (Dockerfile build arg
JOBS_MODULES), so every worker, the API and the completion function import them."""
