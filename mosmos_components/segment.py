"""The library behind ``mosmos segment``, kept under its former module name: everything here is
:mod:`mosmos_components.inference` (import from there)."""

from mosmos_components.inference import *  # noqa: F403
from mosmos_components.inference import __all__  # noqa: F401
from mosmos_components.inference.writers import to_ras as _to_ras  # noqa: F401 - the former private names
from mosmos_components.inference.writers import write_nifti as _write_nifti  # noqa: F401
