"""Package data of ``lmd_utils`` (installed as ``lmd_utils.data``, read with ``importlib.resources``).

* ``templates/``: the versioned layout templates of stage 1 (:mod:`lmd_utils.llm_layouts`);
* ``toyworld/model/``: the trained toy-world diffusion model, the CPU default (:mod:`lmd_utils.models`).

It lives at the top of the repository (``data/``) and is mapped into the package by ``pyproject.toml``, so a clone,
an editable install and a wheel all read the same files.
"""

from importlib.resources import files
from pathlib import Path

#: The data folder on disk (a plain directory in a clone, an editable install or an installed wheel).
DATA_DIR = Path(str(files(__name__)))
