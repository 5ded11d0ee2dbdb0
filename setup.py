"""Shim for Beam's ``--setup_file ./setup.py`` (Dataflow, Flink, Spark workers): Beam builds an sdist from it and
installs that on every worker. Everything about the package is declared in pyproject.toml."""

from setuptools import setup

setup()
