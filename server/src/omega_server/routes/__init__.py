"""HTTP routes (thin): probes and metrics in `ops`, the OpenAI API in `openai`."""
