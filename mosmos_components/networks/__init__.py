"""MOSMOS networks: the pre-training CLIP network and (fine-tuning) segmentation networks."""

from mosmos_components.networks.mosmos_clip import (
    CLIP_MEAN,
    CLIP_STD,
    MosmosPretrainNet,
    TagPromptLearner,
    create_clip,
    encode_text_embeddings,
    register_model_configs,
)
from mosmos_components.networks.tag_decoder import GroupWiseLinear, TagDecoder, sine_position_encoding
