"""A small Flax linen U-Net family for diffusion models on small images: `config` (`UNetLayout`, `UNetConfig`),
`blocks` (the layers and the U-Net's parts, shared with the multi-decoder network of `omsjax.stages`), `unet`
(`UNet`, its initialisation and apply function). See `omsjax.nets.unet` for the architecture."""

from omsjax.nets import blocks, config, unet
from omsjax.nets.blocks import *  # noqa: F403
from omsjax.nets.config import *  # noqa: F403
from omsjax.nets.unet import *  # noqa: F403

__all__ = [*config.__all__, *blocks.__all__, *unet.__all__]
