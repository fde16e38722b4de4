"""MOSMOS components: the networks, losses, transforms, data readers and handlers used by the MOSMOS bundles.

>>> from mosmos_components import extract_tags
>>> extract_tags("Hepatomegaly and a left renal cyst.")
['left kidney', 'liver']
"""

from mosmos_components import errors  # noqa: F401 - bundles call errors.install_summary_hook() in "initialize"
from mosmos_components.tags import DEFAULT_TAGS, TagExtractor, TagVocabulary, extract_tags, tags_to_multi_hot

__version__ = "0.1.0"
__all__ = ["DEFAULT_TAGS", "TagExtractor", "TagVocabulary", "extract_tags", "tags_to_multi_hot", "__version__"]
