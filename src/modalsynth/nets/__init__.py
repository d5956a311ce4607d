"""Networks of the GAN methods: the residual UNet generator and the conditional PatchGAN discriminator."""

from modalsynth.nets.patchgan import PatchDiscriminator
from modalsynth.nets.resunet import ResUNet

__all__ = ["PatchDiscriminator", "ResUNet"]
