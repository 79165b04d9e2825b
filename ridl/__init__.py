"""ridl: build de-identified research imaging libraries from a regional DIR.

This package is the ground floor of the four (``ridl`` < ``export`` | ``deid_recipes`` <
``curation`` < ``flows``; checked by ``make lint``): errors and the ObjectRejected base
(:mod:`ridl.errors`), settings, projects, secrets, pseudonyms, the opt-out list, the study catalog
(:mod:`ridl.catalog`), a release's on-premises state (:mod:`ridl.releases`), the audit log, the
synthetic DIR, and the DIR sources (:mod:`ridl.sources`). It imports no other package of the
project; the ``ridl`` command itself lives on the top floor, in ``flows.cli``.
"""

import logging
import os
import sys
import warnings
from importlib.metadata import PackageNotFoundError, version

import pydicom.config

# Arrow's allocator, chosen before pyarrow loads: jemalloc (in Linux wheels). Arrow's default,
# mimalloc, keeps freed pages per thread, so a process reading partition after partition grew
# with their number (cohort query 243 -> 314 MiB from 2 to 32 partitions, manifest build
# 342 -> 369 MiB; benchmarks/release_scale.py); with jemalloc both stay flat and lower
# (198 -> 199, 226 -> 237 MiB). A setting of the user's own is kept.
if sys.platform == "linux" and "pyarrow" not in sys.modules:
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")

# pydicom's validation warnings quote the value they found ("Invalid value for VR DA:
# '<a study date>'"), and they are printed and logged: a source value must never reach the
# console or a log (README, "Never log or print PHI"). ridl checks values itself
# (curation.integrity) and quarantines what it cannot handle, with a reason and no value.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
# Its other reading warnings name the file read ("End of file reached ... in file <path>"), and
# a DIR's folder names can carry accession numbers: they are kept off the console and the logs
# too (an object that cannot be read is quarantined with its reason).
logging.getLogger("pydicom").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")

try:
    __version__ = version("ridl")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+local"

__all__ = ["__version__"]
