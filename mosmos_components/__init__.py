"""MOSMOS components: the networks, losses, transforms, data readers and handlers used by the MOSMOS bundles.

>>> from mosmos_components import extract_tags
>>> extract_tags("Hepatomegaly and a left renal cyst.")
['left kidney', 'liver']
"""

import logging as _logging
import warnings as _warnings

from mosmos_components import errors, runtime  # noqa: F401 - bundles call both in "initialize"

# Library notices a person cannot act on, repeated for every file read: MONAI's optional GPU DICOM decoder being
# absent (CPU decoding is used), and a deprecated argument that MONAI's own Hausdorff distance passes internally.
_logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(_logging.ERROR)
_warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader: nvImageCodec decoder plugin")
_warnings.filterwarnings("ignore", message=".*get_mask_edges:always_return_as_numpy")
from mosmos_components.tags import DEFAULT_TAGS, TagExtractor, TagVocabulary, extract_tags, tags_to_multi_hot  # noqa: E402

__version__ = "0.8.0"
__all__ = ["DEFAULT_TAGS", "TagExtractor", "TagVocabulary", "extract_tags", "tags_to_multi_hot", "__version__"]
