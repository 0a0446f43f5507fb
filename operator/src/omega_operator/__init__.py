"""omega-vlm operator: reconciles OmegaVLM resources onto NVIDIA Hopper GPU nodes."""

__version__ = "0.1.0"
