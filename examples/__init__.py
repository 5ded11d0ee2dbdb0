"""The bundled offline example: sample outlets in ``site/`` (package data), served on loopback by ``warta --example``."""
