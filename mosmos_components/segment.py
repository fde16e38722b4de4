"""The library behind ``mosmos segment``, kept under its former module name: everything here is
:mod:`mosmos_components.inference` (import from there)."""

from mosmos_components.inference import *  # noqa: F403
from mosmos_components.inference import __all__  # noqa: F401
from mosmos_components.inference.writers import _to_ras, _write_nifti  # noqa: F401 - used by earlier callers
