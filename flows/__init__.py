"""The top floor of ridl: the ``ridl`` CLI, per-study work, run planning, the PHI gate's
orchestration, ``ridl deid``, progress, and the Prefect flows that compose them.

Importing this package does nothing: an entry point (the CLI, a test session, a script) calls
``ridl.settings.configure_prefect_environment()`` before it imports Prefect.
"""
