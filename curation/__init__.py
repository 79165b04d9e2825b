"""Curation (floor 2, above ``export`` and ``deid_recipes``, below ``flows``): what may go out.

Quality checks as plug-ins (:mod:`~curation.checks`, :mod:`~curation.integrity`), burned-in text
(:mod:`~curation.burned_in` triage, :mod:`~curation.pixels` cleaning, :mod:`~curation.ocr`),
IHE IOCM rejection notes (:mod:`~curation.iocm`), quarantine and review on premises, and labeling
lists and hooks. :mod:`~curation.pipeline` composes them per object. From ``export`` it may use
only ``export.store`` and ``export.manifest`` (an import-linter contract).
"""
