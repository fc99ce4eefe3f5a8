"""The `modelsync` program (`python -m services.modelsync`); see daemon.py."""
