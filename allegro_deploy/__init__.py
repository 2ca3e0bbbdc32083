"""allegro-deploy: train, export and run the Allegro machine-learned interatomic potential."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("allegro-deploy")
except PackageNotFoundError:
    __version__ = "0.1.0"
