"""MOSMOS networks: the pre-training CLIP network and the segmentation networks with pixel-tag attention."""

from mosmos_components.networks.base import SEGMENTATION_NETWORKS, SegmentationNetMixin, TrainingOutput
from mosmos_components.networks.encoders import ENCODERS, EncoderFeatures, PTAEncoder, build_encoder
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
from mosmos_components.networks.resnet import ClipResNetEncoder, TorchvisionResNetEncoder
from mosmos_components.networks.ssl import SSLPretrainNet
from mosmos_components.networks.tag_decoder import GroupWiseLinear, TagDecoder, sine_position_encoding
from mosmos_components.networks.timm_encoder import TimmCNNEncoder
from mosmos_components.networks.unet import MosmosUNet, MosmosUNet2D, StockUNet
from mosmos_components.networks.unetr import MosmosUNETR
from mosmos_components.networks.vit3d import ClipViT3DEncoder

__all__ = [
    "StockUNet",
    "CLIP_MEAN",
    "CLIP_STD",
    "ENCODERS",
    "ClipResNetEncoder",
    "ClipViT3DEncoder",
    "EncoderFeatures",
    "GroupWiseLinear",
    "MosmosPretrainNet",
    "MosmosUNETR",
    "MosmosUNet",
    "MosmosUNet2D",
    "PTAEncoder",
    "PixelTagAttention",
    "SSLPretrainNet",
    "SEGMENTATION_NETWORKS",
    "SegmentationNetMixin",
    "TagDecoder",
    "TagPromptLearner",
    "TimmCNNEncoder",
    "TrainingOutput",
    "TorchvisionResNetEncoder",
    "build_encoder",
    "create_clip",
    "encode_text_embeddings",
    "register_model_configs",
    "sine_position_encoding",
]
