"""omega-vlm-server: an OpenAI-compatible VLM inference server."""

__version__ = "0.1.0"
