"""imaging: PACS export to MONAI models on Slurm, tracked in MLflow."""
__version__ = "0.1.0"

# Every entry point (CLI, Slurm jobs, notebooks, tests composing configs) resolves
# imaging/conf/paths through this resolver, so it is registered on import of the package.
from imaging.project import register_resolvers as _register_resolvers

_register_resolvers()
