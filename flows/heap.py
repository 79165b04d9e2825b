"""The garbage collector of a worker process: what it holds before its first study is frozen.

A worker process holds a few hundred thousand objects made before its first study: the modules
it imported (pydicom's dictionaries, pandas, Prefect, the OCR engine), the recipe, the keys and
the curation settings. None of them is ever garbage, yet every full collection of CPython's
cyclic collector walks all of them: measured on the development VM, about 100-120 ms a
collection, four to five collections per 400 objects of realistic studies, landing in whichever
step was allocating at the time (``benchmarks/end_stage.py --mix``). Moving them to the
collector's permanent generation once (``gc.freeze``) leaves each full collection only the
objects made since.
"""

from __future__ import annotations

import gc


def settle() -> None:
    """Collect the garbage there is now, then freeze every object still alive (``gc.freeze``).

    Call it once a worker holds what it keeps for a run (imports, recipe, keys, curation); it
    costs one full collection (about 0.2 s in a worker process here). Objects made later are
    collected as usual; a frozen object is still freed when its last reference goes, only a
    frozen reference cycle is never reclaimed.
    """
    gc.collect()
    gc.freeze()
