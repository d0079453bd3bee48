"""Pictures, apart from the math: the step modules (``attention.py``, ``energy.py``, ``per_box.py``, ``masks.py``,
``composition.py``, ``pipeline.py``, ...) import no matplotlib; their pictures live here.

* One viz module per step module, named after it: the pictures of ``lmd_utils/X.py`` are in
  ``lmd_utils/viz/X.py`` (``viz/layout.py`` for layouts, ``viz/benchmark.py`` for benchmark results); what they
  share is in :mod:`lmd_utils.viz.common`, once.
* Pure functions: tensors or results in, a :class:`matplotlib.figure.Figure` out, no pyplot state (a notebook
  cell that ends with one shows it once; tests inspect it).
* Nothing is re-exported here: import from the step's own module, e.g.
  ``from lmd_utils.viz.attention import attention_grid_figure``.
"""
