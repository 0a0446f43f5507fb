"""vlmbench: the throughput harness (issues 7, 13, 15, 16): random-weight VLMs of real sizes, our engine
alone and over HTTP, extra workloads, transformers' own continuous batching and server as the peer.

Modules, one job each:
  stats       per-request timings -> cell metrics (percentiles, rates; burst windows, prefix groups)
  roofline    bytes one decode step must read (weights touched, MoE: active experts only, + KV cache)
  bandwidth   the GPU's datasheet bandwidth by name, and a device-to-device copy measured on it
  shapes      model shapes (Omega17VLExp = Qwen3-VL-MoE, Qwen2.5-VL-7B, tiny test shapes), tokenizer,
              processor, a weightless checkpoint directory and random weights built on the device
  workload    the standard request: a prompt of exactly N tokens with one image
  scenarios   every workload as data (standard, vision-heavy, shared prefix, burst, JSON schema)
  results     row schema, versions, the JSON file and its name
  table       rows -> the README's markdown tables (ours / peer ratios, both rooflines)
  plot        rows -> PNGs of output tok/s and TTFT p50 against concurrency
  drivers     engine driver (no HTTP), plain generate() baseline
  http_driver the real FastAPI app served in-process, driven by the client in another process
  client      the streaming HTTP client (``python -m bench.vlmbench.client``): wave, closed loop, burst
  context     one run's configuration, clock, rows, bandwidth and fresh image seeds
  engines     our engine loaded for a phase, and served over HTTP
  standard    the standard cells of one (model, backend)
  scenario_cells the extra workloads' cells over HTTP
  peer        transformers' continuous batching (generate_batch) as the peer; peer_serve: transformers serve
  run         the run: bandwidth, then per model x backend the phases, then the peer, under a deadline
Run: ``python -m bench.vlmbench run --help``.
"""
