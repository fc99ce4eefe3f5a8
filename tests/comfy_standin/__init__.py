"""A stand-in for ComfyUI 0.3.64 that tests run as a separate process.

It answers ComfyUI's HTTP and websocket API the way the recordings in
`tests/fixtures/comfy/` show a real ComfyUI answering, and really executes the
model-free image nodes with Pillow, so code that talks to ComfyUI can be tested
without a GPU or models. Start it with `python -m tests.comfy_standin` (flags: config.py)
or from tests with `tests.standin_process.start_standin`.

Modules, one job each:
  __main__       start-up, binding, signals
  config         command line (ComfyUI's flags) and folder layout
  server         HTTP routes and websocket clients
  prompt_queue   pending / running prompts, history, /free flags
  executor       worker thread running prompts and emitting their events
  graph          node execution order
  cache          outputs cached by input signature
  validation     /prompt validation and its error shapes
  nodes          node base class and /object_info entries
  registry       all node classes by class_type
  image_nodes    EmptyImage, ImageInvert, LoadImage, SaveImage, PreviewImage, SaveAnimated*
  model_nodes    SD1.5 txt2img nodes: validated for real, run without models
  standin_nodes  test-only StandinSleep, StandinRaise, StandinExit
  files          file naming and path-safety rules
  images         IMAGE / MASK values
  system_info    /system_stats and /features
"""
