"""warta settings: the feeds file and settings.yaml (pydantic models in :mod:`warta.config.settings`)."""

__version__ = "0.1.0"
