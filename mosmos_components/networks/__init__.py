"""MOSMOS networks: the pre-training CLIP network and the segmentation networks with pixel-tag attention."""

from mosmos_components.networks.base import SEGMENTATION_NETWORKS, SegmentationNetMixin
from mosmos_components.networks.mosmos_clip import (
    CLIP_MEAN,
    CLIP_STD,
    MosmosPretrainNet,
    TagPromptLearner,
    create_clip,
    encode_text_embeddings,
    register_model_configs,
)
from mosmos_components.networks.pta import PixelTagAttention
from mosmos_components.networks.ssl import SSLPretrainNet
from mosmos_components.networks.tag_decoder import GroupWiseLinear, TagDecoder, sine_position_encoding
from mosmos_components.networks.unet2d import MosmosUNet2D
from mosmos_components.networks.unetr import ClipViT3DEncoder, MosmosUNETR

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "ClipViT3DEncoder",
    "GroupWiseLinear",
    "MosmosPretrainNet",
    "MosmosUNETR",
    "MosmosUNet2D",
    "PixelTagAttention",
    "SSLPretrainNet",
    "SEGMENTATION_NETWORKS",
    "SegmentationNetMixin",
    "TagDecoder",
    "TagPromptLearner",
    "create_clip",
    "encode_text_embeddings",
    "register_model_configs",
    "sine_position_encoding",
]
