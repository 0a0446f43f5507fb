"""vlmbench: the throughput harness of issue 7 (random-weight VLMs of real sizes, engine and HTTP drivers).

Modules, one job each:
  stats     per-request timings -> cell metrics (percentiles, aggregate and per-request tokens/s)
  roofline  bytes one decode step must read (weights touched, MoE: active experts only, + KV cache)
  shapes    model shapes (Omega17VLExp = Qwen3-VL-MoE, Qwen2.5-VL-7B, tiny test shapes), tokenizer,
            processor, a weightless checkpoint directory and random weights built on the device
  workload  the request: a prompt of exactly N tokens with one image, in engine and OpenAI form
  results   row schema, versions, the JSON file and the markdown table
  drivers   engine driver (no HTTP), plain generate() baseline
  http_driver the real FastAPI app served in-process, driven by the client in another process
  client    the streaming HTTP client (``python -m bench.vlmbench.client``)
  run       the matrix: models x backends x (baseline, drivers x concurrency) under a time budget
Run: ``python -m bench.vlmbench run --help``.
"""
