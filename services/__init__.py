"""The ComfyUI appliance for RunPod: Pod API, serverless worker, model store and versions."""

__version__ = "0.1.0"
