"""Workflows saved by ComfyUI's editor (UI format) made API prompts (services/jobs/ui_format.py).

Each conversion is checked against the API prompt written by hand, with the node definitions
of a real ComfyUI (a recorded /object_info) and of the stand-in; the end-to-end tests run a
converted workflow through the job runner and compare its image with the API prompt's.
"""
import asyncio
import base64
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from services.comfy.client import ComfyClient
from services.comfy.provider import FixedComfy
from services.config import Settings
from services.errors import AppError
from services.jobs import ui_format
from services.jobs.runner import JobRunner
from services.jobs.workflow import UiWorkflow, parse_workflow
from services.versions.spec import SpecStore
from tests.comfy_standin.files import Paths
from tests.comfy_standin.nodes import object_info as standin_info
from tests.comfy_standin.registry import NODE_TYPES

FIXTURES = Path(__file__).parent / "fixtures"
TITLES = {"EmptyImage": "EmptyImage", "ImageInvert": "Invert Image", "SaveImage": "Save Image",
          "PreviewImage": "Preview Image", "LoadImage": "Load Image", "KSampler": "KSampler",
          "CheckpointLoaderSimple": "Load Checkpoint", "CLIPTextEncode": "CLIP Text Encode (Prompt)",
          "EmptyLatentImage": "Empty Latent Image", "VAEDecode": "VAE Decode"}


@pytest.fixture(params=["real_recording", "standin"])
def info(request, tmp_path):
    """/object_info of a real ComfyUI 0.3.64 (recorded) or of the stand-in."""
    if request.param == "real_recording":
        return json.loads((FIXTURES / "comfy" / "object_info_selected.json").read_text())
    paths = Paths(output=str(tmp_path), input=str(tmp_path), temp=str(tmp_path))
    return {name: standin_info(node, paths) for name, node in NODE_TYPES.items()}


def api(class_type, title=None, **inputs):
    return {"inputs": inputs, "class_type": class_type, "_meta": {"title": title or TITLES[class_type]}}


def node(node_id, kind, widgets=None, inputs=(), outputs=(), mode=0, **extra):
    """A node as the editor saves it; inputs: (name, type, link[, widget name]), outputs: (name, type)."""
    saved = {"id": node_id, "type": kind, "mode": mode, "flags": {}, "pos": [0, 0], "properties": {},
             "inputs": [{"name": i[0], "type": i[1], "link": i[2], **({"widget": {"name": i[3]}} if len(i) > 3 else {})}
                        for i in inputs],
             "outputs": [{"name": name, "type": kind_, "links": []} for name, kind_ in outputs], **extra}
    if widgets is not None:
        saved["widgets_values"] = widgets
    return saved


def graph(nodes, links, **extra):
    return {"last_node_id": 99, "last_link_id": 99, "nodes": nodes, "links": links, "groups": [], "config": {},
            "extra": {}, "version": 0.4, **extra}


IMAGE_OUT = [("IMAGE", "IMAGE")]


def invert_chain(color=0x33AAFF):
    """EmptyImage -> ImageInvert -> SaveImage, as saved and as exported."""
    ui = graph([node(1, "EmptyImage", [64, 48, 1, color], outputs=IMAGE_OUT),
                node(2, "ImageInvert", [], [("image", "IMAGE", 1)], IMAGE_OUT),
                node(3, "SaveImage", ["inverted"], [("images", "IMAGE", 2)])],
               [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 3, 0, "IMAGE"]])
    prompt = {"1": api("EmptyImage", width=64, height=48, batch_size=1, color=color),
              "2": api("ImageInvert", image=["1", 0]),
              "3": api("SaveImage", images=["2", 0], filename_prefix="inverted")}
    return ui, prompt


def refused(ui, info) -> str:
    with pytest.raises(AppError) as err:
        ui_format.to_prompt(ui, info)
    assert err.value.code == "invalid_workflow:ui_format" and err.value.status == 400
    return err.value.detail


# ---- conversions -----------------------------------------------------------------------

def test_a_plain_chain(info):
    ui, prompt = invert_chain()
    assert ui_format.to_prompt(ui, info) == prompt


def test_links_saved_as_objects_read_the_same(info):
    ui, prompt = invert_chain()
    names = ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type")
    ui["links"] = [dict(zip(names, link)) for link in ui["links"]]
    assert ui_format.to_prompt(ui, info) == prompt


def test_reroutes_resolve_to_their_source(info):
    reroute = [("", "*", None)], [("", "IMAGE")]
    ui = graph([node(1, "EmptyImage", [64, 48, 1, 5], outputs=IMAGE_OUT),
                node(4, "Reroute", None, [("", "*", 1)], reroute[1]),
                node(5, "Reroute", None, [("", "*", 2)], reroute[1]),
                node(3, "SaveImage", ["rerouted"], [("images", "IMAGE", 3)])],
               [[1, 1, 0, 4, 0, "IMAGE"], [2, 4, 0, 5, 0, "*"], [3, 5, 0, 3, 0, "IMAGE"]])
    assert ui_format.to_prompt(ui, info) == {
        "1": api("EmptyImage", width=64, height=48, batch_size=1, color=5),
        "3": api("SaveImage", images=["1", 0], filename_prefix="rerouted")}


def test_a_primitive_pushes_its_value_into_the_widgets_it_feeds(info):
    primitive = node(7, "PrimitiveNode", [256, "fixed"], outputs=[("INT", "INT")], title="size")
    primitive["outputs"][0]["widget"] = {"name": "width"}
    ui = graph([primitive,
                node(1, "EmptyImage", [64, 48, 1, 0], [("width", "INT", 10, "width"), ("height", "INT", 11, "height")],
                     IMAGE_OUT),
                node(2, "Note", ["a note: never sent"]),
                node(3, "SaveImage", ["prim"], [("images", "IMAGE", 12)])],
               [[10, 7, 0, 1, 0, "INT"], [11, 7, 0, 1, 1, "INT"], [12, 1, 0, 3, 0, "IMAGE"]])
    assert ui_format.to_prompt(ui, info) == {
        "1": api("EmptyImage", width=256, height=256, batch_size=1, color=0),
        "3": api("SaveImage", images=["1", 0], filename_prefix="prim")}


def txt2img(seed_values):
    """The SD1.5 chain with KSampler's widget values as given."""
    return graph([
        node(4, "CheckpointLoaderSimple", ["random_sd15.safetensors"],
             outputs=[("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")]),
        node(6, "CLIPTextEncode", ["a cat"], [("clip", "CLIP", 3)], [("CONDITIONING", "CONDITIONING")]),
        node(7, "CLIPTextEncode", ["blurry"], [("clip", "CLIP", 5)], [("CONDITIONING", "CONDITIONING")],
             title="Negative"),
        node(5, "EmptyLatentImage", [64, 64, 1], outputs=[("LATENT", "LATENT")]),
        node(3, "KSampler", seed_values, [("model", "MODEL", 1), ("positive", "CONDITIONING", 4),
                                          ("negative", "CONDITIONING", 6), ("latent_image", "LATENT", 2)],
             [("LATENT", "LATENT")]),
        node(8, "VAEDecode", None, [("samples", "LATENT", 7), ("vae", "VAE", 8)], IMAGE_OUT),
        node(9, "SaveImage", ["txt2img"], [("images", "IMAGE", 9)])],
        [[1, 4, 0, 3, 0, "MODEL"], [2, 5, 0, 3, 3, "LATENT"], [3, 4, 1, 6, 0, "CLIP"], [4, 6, 0, 3, 1, "CONDITIONING"],
         [5, 4, 1, 7, 0, "CLIP"], [6, 7, 0, 3, 2, "CONDITIONING"], [7, 3, 0, 8, 0, "LATENT"], [8, 4, 2, 8, 1, "VAE"],
         [9, 8, 0, 9, 0, "IMAGE"]])


def test_the_seeds_control_after_generate_value_is_skipped(info):
    ui = txt2img([42, "randomize", 12, 7.5, "euler", "karras", 0.9])
    assert ui_format.to_prompt(ui, info) == {
        "4": api("CheckpointLoaderSimple", ckpt_name="random_sd15.safetensors"),
        "6": api("CLIPTextEncode", text="a cat", clip=["4", 1]),
        "7": api("CLIPTextEncode", "Negative", text="blurry", clip=["4", 1]),
        "5": api("EmptyLatentImage", width=64, height=64, batch_size=1),
        "3": api("KSampler", seed=42, steps=12, cfg=7.5, sampler_name="euler", scheduler="karras", denoise=0.9,
                 model=["4", 0], positive=["6", 0], negative=["7", 0], latent_image=["5", 0]),
        "8": api("VAEDecode", samples=["3", 0], vae=["4", 2]),
        "9": api("SaveImage", images=["8", 0], filename_prefix="txt2img")}


def test_the_frontends_default_graph(info):
    """Source: tests/fixtures/ui_workflows/README.md (the editor's own default workflow)."""
    ui = json.loads((FIXTURES / "ui_workflows" / "frontend_default.json").read_text())
    assert ui_format.to_prompt(ui, info) == {
        "3": api("KSampler", seed=156680208700286, steps=20, cfg=8, sampler_name="euler", scheduler="normal",
                 denoise=1, model=["4", 0], positive=["6", 0], negative=["7", 0], latent_image=["5", 0]),
        "4": api("CheckpointLoaderSimple", ckpt_name="v1-5-pruned-emaonly-fp16.safetensors"),
        "5": api("EmptyLatentImage", width=512, height=512, batch_size=1),
        "6": api("CLIPTextEncode", text="beautiful scenery nature glass bottle landscape, , purple galaxy bottle,",
                 clip=["4", 1]),
        "7": api("CLIPTextEncode", text="text, watermark", clip=["4", 1]),
        "8": api("VAEDecode", samples=["3", 0], vae=["4", 2]),
        "9": api("SaveImage", images=["8", 0], filename_prefix="ComfyUI")}  # no widgets_values: the default


def test_a_muted_node_is_dropped_with_the_inputs_it_feeds(info):
    ui = graph([node(1, "EmptyImage", [8, 8, 1, 0], outputs=IMAGE_OUT),
                node(2, "ImageInvert", [], [("image", "IMAGE", 1)], IMAGE_OUT, mode=2),
                node(3, "PreviewImage", [], [("images", "IMAGE", 2)]),
                node(4, "SaveImage", ["kept"], [("images", "IMAGE", 3)]),
                node(5, "SaveImage", ["muted"], [("images", "IMAGE", 4)], mode=2)],
               [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 3, 0, "IMAGE"], [3, 1, 0, 4, 0, "IMAGE"], [4, 1, 0, 5, 0, "IMAGE"]])
    assert ui_format.to_prompt(ui, info) == {
        "1": api("EmptyImage", width=8, height=8, batch_size=1, color=0),
        "3": api("PreviewImage"),  # as the editor exports it: ComfyUI then names the missing input
        "4": api("SaveImage", images=["1", 0], filename_prefix="kept")}


def test_a_bypassed_node_passes_its_input_through(info):
    ui, _ = invert_chain()
    ui["nodes"][1]["mode"] = 4
    assert ui_format.to_prompt(ui, info) == {
        "1": api("EmptyImage", width=64, height=48, batch_size=1, color=0x33AAFF),
        "3": api("SaveImage", images=["1", 0], filename_prefix="inverted")}


def test_a_bypassed_node_of_an_unknown_type_is_passed_through_by_its_saved_slots(info):
    ui, _ = invert_chain()
    ui["nodes"][1].update(type="SomeUninstalledFilter", mode=4)
    assert ui_format.to_prompt(ui, info)["3"]["inputs"]["images"] == ["1", 0]


def test_load_image_with_or_without_the_upload_buttons_value(info):
    for saved in (["photo.png", "image"], ["photo.png"]):
        ui = graph([node(1, "LoadImage", saved, outputs=[("IMAGE", "IMAGE"), ("MASK", "MASK")]),
                    node(2, "SaveImage", ["copy"], [("images", "IMAGE", 1)])], [[1, 1, 0, 2, 0, "IMAGE"]])
        assert ui_format.to_prompt(ui, info)["1"] == api("LoadImage", image="photo.png")


def test_which_inputs_get_a_control_value():
    info = {"Synthetic": {"input": {
        "required": {"noise_seed": ["INT", {}], "seed": ["INT", {"control_after_generate": False}],
                     "pick": [["a", "b"], {"control_after_generate": True}], "wired": ["INT", {"forceInput": True}],
                     "items": ["STRING", {}]},
        "optional": {"strength": ["FLOAT", {"default": 0.5}]}},
        "input_order": {"required": ["noise_seed", "seed", "pick", "wired", "items"], "optional": ["strength"]}}}
    ui = graph([node(1, "Synthetic", [7, "increment", 8, "b", "fixed", ["x", "y"], 0.25])], [])
    assert ui_format.to_prompt(ui, info)["1"]["inputs"] == {
        "noise_seed": 7, "seed": 8, "pick": "b", "items": {"__value__": ["x", "y"]}, "strength": 0.25}


def test_parse_workflow_keeps_a_ui_workflow_for_the_runner():
    ui, _ = invert_chain()
    parsed = parse_workflow(json.dumps(ui))
    assert isinstance(parsed, UiWorkflow) and parsed.graph == ui


# ---- refusals --------------------------------------------------------------------------

def test_an_unknown_node_type_is_refused_by_name(info):
    ui, _ = invert_chain()
    ui["nodes"][1]["type"] = "FancyUpscale"
    assert refused(ui, info).startswith("node 2 (FancyUpscale): this ComfyUI has no node of that type")


def test_a_wrong_widget_count_is_refused_with_what_was_expected(info):
    ui, _ = invert_chain()
    ui["nodes"][0]["widgets_values"] = [64, 48, 1]
    detail = refused(ui, info)
    assert detail.startswith("node 1 (EmptyImage): 3 widget values")
    assert "has 4 (width, height, batch_size, color)" in detail


def test_values_that_do_not_line_up_with_the_seeds_control_are_refused(info):
    ui = txt2img([42, 12, 7.5, "euler", "normal", 1.0, "extra"])  # the right count, shifted
    detail = refused(ui, info)
    assert detail.startswith("node 3 (KSampler): the value after seed is 12") and "control_after_generate" in detail


def test_subgraphs_and_group_nodes_are_refused_before_any_comfyui_is_asked():
    ui, _ = invert_chain()
    uuid = "f3c1b6a2-1d2e-4c8b-9a0e-4b6f1c2d3e4f"
    ui["nodes"][1]["type"] = uuid
    ui["definitions"] = {"subgraphs": [{"id": uuid, "nodes": [], "links": []}]}
    with pytest.raises(AppError) as err:
        parse_workflow(ui)
    assert err.value.code == "invalid_workflow:ui_format"
    assert err.value.detail.startswith(f"node 2 ({uuid}) is a subgraph")
    ui.pop("definitions")
    ui["nodes"][1]["type"] = "workflow>my group"
    with pytest.raises(AppError) as err:
        parse_workflow(ui)
    assert err.value.detail.startswith("node 2 (workflow>my group) is a group node")


def test_broken_links_and_shapes_are_refused(info):
    ui, _ = invert_chain()
    ui["links"].pop()
    assert refused(ui, info) == "link 2 is used by a node but not listed in links"
    ui, _ = invert_chain()
    ui["nodes"].append(dict(ui["nodes"][0]))
    assert refused(ui, info) == "node 1 (EmptyImage): two nodes have this id"
    ui, _ = invert_chain()
    for each in ui["nodes"]:
        each["mode"] = 2
    assert refused(ui, info).startswith("no node is left to run")


# ---- end to end: the runner against a ComfyUI ------------------------------------------

def run_jobs(url, payloads):
    async def go():
        settings = Settings.from_env({"DEFAULT_VERSION_ID": "demo"})
        client = ComfyClient(url)
        runner = JobRunner(settings, SpecStore(settings.versions_dir), FixedComfy(client))
        try:
            return await asyncio.gather(*(runner.run(p) for p in payloads), return_exceptions=True)
        finally:
            await runner.close()
            await client.close()
    return asyncio.run(go())


def pixels(result) -> bytes:
    image = Image.open(io.BytesIO(base64.b64decode(result["base64"])))
    return image.convert("RGB").tobytes()


@pytest.mark.comfy
def test_a_ui_workflow_runs_and_makes_the_api_prompts_image(comfy):
    ui, prompt = invert_chain(color=0x1188CC)
    reroute = node(8, "Reroute", None, [("", "*", 5)], [("", "IMAGE")])
    bypassed = node(9, "ImageInvert", [], [("image", "IMAGE", 6)], IMAGE_OUT, mode=4)
    ui["nodes"] += [reroute, bypassed]
    ui["nodes"][2]["inputs"][0]["link"] = 7  # SaveImage <- bypassed invert <- reroute <- ImageInvert
    ui["links"] = [ui["links"][0], [5, 2, 0, 8, 0, "IMAGE"], [6, 8, 0, 9, 0, "IMAGE"], [7, 9, 0, 3, 0, "IMAGE"]]
    uninstalled = {**ui, "nodes": [*ui["nodes"][:2], {**ui["nodes"][2], "type": "NotInstalled"}, *ui["nodes"][3:]]}
    from_ui, from_api, overridden, unknown = run_jobs(comfy.url, [
        {"workflow": ui}, {"workflow": prompt}, {"workflow": json.dumps(ui), "overrides": {"1": {"color": 0}}},
        {"workflow": uninstalled}])
    assert not isinstance(from_ui, BaseException), from_ui
    assert pixels(from_ui) == pixels(from_api)
    assert from_ui["provenance"]["workflow_sha256"] == from_api["provenance"]["workflow_sha256"]  # the same prompt ran
    assert pixels(overridden) == Image.new("RGB", (64, 48), (255, 255, 255)).tobytes()  # overrides name API nodes
    assert isinstance(unknown, AppError) and unknown.code == "invalid_workflow:ui_format"
    assert unknown.detail.startswith("node 3 (NotInstalled): this ComfyUI has no node of that type")
