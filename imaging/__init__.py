"""imaging: PACS export to MONAI models on Slurm, tracked in MLflow."""
__version__ = "0.1.0"
