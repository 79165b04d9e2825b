"""Prefect flows of ridl. Importing this package configures Prefect for offline use first."""

from ridl.settings import configure_prefect_environment

configure_prefect_environment()
