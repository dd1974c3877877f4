"""MLflow: runs, resume, registry, review images."""
