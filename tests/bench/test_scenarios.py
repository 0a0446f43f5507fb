"""The extra workloads as data: request counts, groups and images per schedule, the bodies sent, the
real processors' prompt lengths, and the shallow JSON check."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from bench.vlmbench import shapes
from bench.vlmbench.client import spec_scenario
from bench.vlmbench.scenario_cells import estimate_prompt_tokens
from bench.vlmbench.scenarios import (
    JSON_SCHEMA_FORMAT,
    SCENARIOS,
    Scenario,
    build_bodies,
    companion_of,
    get_scenario,
    groups,
    image_seeds,
    json_conforms,
    request_count,
    seeds_used,
    slots_needed,
)
from bench.vlmbench.workload import Workload, image_data_url, noise_image, openai_body


def test_the_workloads_of_the_issues() -> None:
    v4, v1 = get_scenario("vision4x1024"), get_scenario("vision1x1792")
    assert (v4.images_per_request, v4.image_size, v4.text_chars, v4.output_tokens) == (4, 1024, 128, 256)
    assert (v1.images_per_request, v1.image_size, v1.output_tokens, v4.default_concurrency) == (
        1,
        1792,
        256,
        (1, 16),
    )
    p = get_scenario("prefix")
    assert (p.system_chars, p.distinct_images, p.requests, p.schedule) == (400, 8, 64, "closed")
    b = get_scenario("burst")
    assert (b.schedule, b.burst_requests, b.default_concurrency) == ("burst", 16, (16,))
    j = get_scenario("json_schema")
    assert j.response_format == JSON_SCHEMA_FORMAT and JSON_SCHEMA_FORMAT["json_schema"]["strict"] is True
    off = companion_of(j)
    assert off is not None and off.name == "json_schema_off" and off.response_format is None
    assert companion_of(v4) is None
    with pytest.raises(ValueError, match="unknown workload 'nope'"):
        get_scenario("nope")
    with pytest.raises(ValueError, match="schedule"):
        Scenario("x", schedule="poisson")
    assert Scenario.from_dict(json.loads(json.dumps(p.to_dict()))) == p


def test_counts_groups_and_images_per_schedule() -> None:
    v4, p, b = SCENARIOS["vision4x1024"], SCENARIOS["prefix"], SCENARIOS["burst"]
    assert (request_count(v4, 16), slots_needed(v4, 16), seeds_used(v4, 16)) == (16, 16, 64)
    # every image of a vision cell is its own: 4 per request, none shared
    seeds = [s for i in range(16) for s in image_seeds(v4, 100, i)]
    assert len(set(seeds)) == 64 and min(seeds) == 100
    # the prefix cell: 64 requests, 16 in flight, 8 images that repeat
    assert (request_count(p, 16), slots_needed(p, 16), seeds_used(p, 16)) == (64, 16, 8)
    assert image_seeds(p, 7, 3) == image_seeds(p, 7, 11) == [10]
    g = groups(p, 16)
    assert g[:9] == [*(f"first:{k}" for k in range(8)), "repeat:0"] and len(g) == 64
    # the burst: 16 running, 16 arriving, all in flight together
    assert (request_count(b, 16), slots_needed(b, 16)) == (32, 32)
    assert groups(b, 16) == ["running"] * 16 + ["burst"] * 16


def test_bodies_hold_the_images_text_and_format() -> None:
    small = SCENARIOS["vision4x1024"].with_(image_size=32)
    bodies = build_bodies(small, "m", 2, seed=5)
    assert [g for g, _ in bodies] == ["", ""]
    body = json.loads(bodies[1][1])
    parts = body["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["image_url"] * 4 + ["text"]
    assert len(parts[4]["text"]) == 128 and body["max_tokens"] == 256 and "response_format" not in body
    url = parts[0]["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert decoded.size == (32, 32) and decoded.format == "JPEG"
    # the prefix: one shared 400-character instruction, then the image and a question of the request's own
    prefix = [
        json.loads(b) for _, b in build_bodies(SCENARIOS["prefix"].with_(image_size=16), "m", 2, seed=0)
    ]
    systems = {b["messages"][0]["content"] for b in prefix}
    assert len(systems) == 1 and len(systems.pop()) == 400
    questions = [b["messages"][1]["content"][1]["text"] for b in prefix[:2]]
    assert questions[0] != questions[1]
    burst = [
        json.loads(b)
        for _, b in build_bodies(SCENARIOS["burst"].with_(image_size=16, text_chars=8), "m", 2, 0)
    ]
    assert [b["max_tokens"] for b in burst] == [512, 512] + [32] * 16
    js = json.loads(build_bodies(SCENARIOS["json_schema"].with_(image_size=16), "m", 1, 0)[0][1])
    assert js["response_format"] == JSON_SCHEMA_FORMAT
    assert js["messages"][0]["content"][1]["text"].startswith("Reply with one JSON object")


def test_the_standard_body_is_the_one_the_client_always_sent() -> None:
    """Issue 7's rows stay comparable: the standard scenario's body is byte-for-byte the older one."""
    wl = Workload(prompt_tokens=0, output_tokens=9, image_size=24)
    spec = {"text_chars": 30, "workload": {"prompt_tokens": 0, "output_tokens": 9, "image_size": 24}}
    (_, body), *_ = build_bodies(spec_scenario(spec), "m", 1, seed=3)
    from bench.vlmbench.workload import filler_text

    old = openai_body("m", image_data_url(noise_image(24, 3)), filler_text(30), wl)
    assert json.loads(body) == old


@pytest.mark.parametrize(
    ("model", "vision4", "vision1"),
    # Qwen2.5-VL (patch 14): 1024 -> 980 px under its pixel budget, 35x35 = 1225 tokens an image; 1792 ->
    # the same. Qwen3-VL (patch 16): 1024 -> 32x32 = 1024 tokens; 1792 -> 1225. Plus 128 text tokens, the
    # chat template (19) and the vision start/end markers (2 an image).
    [
        ("qwen2_5_vl_7b", 4 * 1225 + 128 + 19 + 8, 1225 + 128 + 19 + 2),
        ("omega17_vl_exp", 4 * 1024 + 155, 1374),
    ],
)
def test_real_processors_count_the_vision_workloads(model: str, vision4: int, vision1: int) -> None:
    shape = shapes.get_shape(model)
    processor = shapes.build_processor(shape, shapes.build_tokenizer(shape.vocab_size))
    assert estimate_prompt_tokens(processor, SCENARIOS["vision4x1024"]) == vision4
    assert estimate_prompt_tokens(processor, SCENARIOS["vision1x1792"]) == vision1
    assert estimate_prompt_tokens(processor, SCENARIOS["json_schema"]) == 512  # fitted later, by the engine


def test_json_conforms_checks_the_top_level() -> None:
    good = {"caption": "a cat", "objects": [{"name": "cat", "count": 1}], "has_text": False}
    assert json_conforms(json.dumps(good))
    assert not json_conforms(None) and not json_conforms("") and not json_conforms("{oops")
    assert not json_conforms("[1, 2]")
    assert not json_conforms(json.dumps({k: v for k, v in good.items() if k != "has_text"}))  # required
    assert not json_conforms(json.dumps({**good, "extra": 1}))  # additionalProperties: false
    assert not json_conforms(json.dumps({**good, "objects": "cat"}))  # wrong type
