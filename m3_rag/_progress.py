"""The tqdm class m3_rag's progress bars use: ``tqdm.auto`` when it can draw a notebook widget, else plain tqdm.

``tqdm.auto`` picks the notebook bar inside Jupyter, which needs ipywidgets; without it, it warns
``TqdmWarning: IProgress not found`` on every bar. Plain tqdm (text on stderr) works everywhere.
"""

from __future__ import annotations

import importlib.util

if importlib.util.find_spec("ipywidgets") is not None:
    from tqdm.auto import tqdm
else:
    from tqdm.std import tqdm

__all__ = ["tqdm"]
