"""omega-vlm operator: reconciles OmegaVLM resources onto H100 nodes."""

__version__ = "0.1.0"
