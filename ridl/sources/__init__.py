"""DIR sources (ground floor): how ridl finds and retrieves studies in a clinical archive.

:mod:`ridl.sources.base` holds the :class:`~ridl.sources.base.StudySource` protocol and the
``SOURCES`` table (scheme to ``"module:Class"``, imported on first use); the back-ends are
:mod:`~ridl.sources.folder`, :mod:`~ridl.sources.dimse` (C-FIND, C-GET/C-MOVE, PS3.4) and
:mod:`~ridl.sources.dicomweb` (QIDO-RS, WADO-RS, PS3.18). :mod:`~ridl.sources.hn` is the one
health-number reader every source uses; :mod:`~ridl.sources.protect` keeps the archive's load
within limits.
"""
