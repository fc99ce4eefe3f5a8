import subprocess
import sys
from pathlib import Path

import pytest

from services.config import REPO_ROOT, SETTINGS, Settings, SettingsError


def test_local_defaults_live_under_the_checkout():
    s = Settings.from_env({})
    assert s.profile == "local"
    assert s.data_root == REPO_ROOT / ".data"
    assert s.comfy_home == REPO_ROOT / ".data" / "ComfyUI"
    assert s.models_dir == REPO_ROOT / ".data" / "models"
    assert s.output_mode == "auto"  # inline base64 while it fits; no bucket is configured locally
    assert s.api_host == "127.0.0.1" and s.comfy_host == "127.0.0.1"
    assert s.mode == "serverless"
    assert s.default_version_id == "demo" and s.active_versions == ("demo",)  # `make run` installs and runs it
    assert s.comfy_cpu == "auto"


def test_image_profile_uses_the_seeds_defaults():
    s = Settings.from_env({"APPLIANCE_PROFILE": "image"})
    assert s.comfy_home == Path("/workspace/ComfyUI")
    assert s.models_dir == Path("/workspace/models")
    # The seeds' `gcs` default became `auto` (issue 15): with GCS_BUCKET set, what does not fit
    # inline goes to the bucket, and a result never outgrows RunPod's cap; OUTPUT_MODE=gcs still works.
    assert s.output_mode == "auto"
    assert s.gcs_prefix == "comfy/outputs"
    assert (s.gcs_retries, s.gcs_retry_base_sleep, s.gcs_public, s.gcs_signed_url_ttl, s.gcs_validate) == (3, 0.5, False, 0, True)
    assert s.api_port == 8000
    assert s.default_version_id == "" and s.active_versions == ()  # an image names its baked version itself


def test_exposure_defaults_are_closed():
    local, image = Settings.from_env({}), Settings.from_env({"APPLIANCE_PROFILE": "image"})
    assert (local.api_host, local.api_allowed_hosts, local.allow_unauthenticated) == ("127.0.0.1", (), False)
    assert (image.api_host, image.api_allowed_hosts, image.allow_unauthenticated) == ("0.0.0.0", ("*.proxy.runpod.net",), False)
    assert Settings.from_env({"API_ALLOWED_HOSTS": "a.example, *.b.example [::2] *"}).api_allowed_hosts == (
        "a.example", "*.b.example", "[::2]", "*")
    assert Settings.from_env({"GCS_ALLOWED_BUCKETS": "one-bucket two.example.com"}).gcs_allowed_buckets == (
        "one-bucket", "two.example.com")


def test_derived_paths_follow_their_root():
    s = Settings.from_env({"DATA_ROOT": "/runpod-volume"})
    assert s.comfy_home == Path("/runpod-volume/ComfyUI")
    assert s.models_dir == Path("/runpod-volume/models")
    assert s.run_dir == Path("/runpod-volume/run")


@pytest.mark.parametrize("name", ["MODELS_DIR", "COMFYUI_MODEL_DIR"])
def test_both_model_dir_names_are_accepted(name):
    assert Settings.from_env({name: "/vol/models"}).models_dir == Path("/vol/models")


def test_canonical_name_wins_over_alias():
    s = Settings.from_env({"MODELS_DIR": "/a", "COMFYUI_MODEL_DIR": "/b"})
    assert s.models_dir == Path("/a")


def test_runpod_serverless_forces_serverless_mode():
    assert Settings.from_env({"LAUNCH_MODE": "api"}).mode == "api"
    assert Settings.from_env({"LAUNCH_MODE": "api", "RUNPOD_SERVERLESS": "1"}).mode == "serverless"


@pytest.mark.parametrize("env,needle", [
    ({"OUTPUT_MODE": "ftp"}, "OUTPUT_MODE"),
    ({"API_PORT": "abc"}, "API_PORT"),
    ({"API_PORT": "70000"}, "API_PORT"),
    ({"DRY_RUN": "maybe"}, "DRY_RUN"),
    ({"LAUNCH_MODE": "pod"}, "LAUNCH_MODE"),
    ({"JOB_TIMEOUT": "-1"}, "JOB_TIMEOUT"),
    ({"COMFY_CPU": "maybe"}, "COMFY_CPU"),
    ({"ALLOW_UNAUTHENTICATED": "maybe"}, "ALLOW_UNAUTHENTICATED"),
    ({"API_ALLOWED_HOSTS": "https://pod.example.com"}, "API_ALLOWED_HOSTS"),
    ({"API_ALLOWED_HOSTS": "ok.example.com evil.com/x"}, "API_ALLOWED_HOSTS"),
    ({"GCS_BUCKET": "Bad_Bucket"}, "GCS_BUCKET"),
    ({"GCS_BUCKET": "goog-x"}, "GCS_BUCKET"),
    ({"GCS_ALLOWED_BUCKETS": "fine-bucket -bad-"}, "GCS_ALLOWED_BUCKETS"),
])
def test_wrong_values_name_the_variable(env, needle):
    with pytest.raises(SettingsError) as err:
        Settings.from_env(env)
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("raw,value", [("auto", "auto"), ("AUTO", "auto"), ("1", True), ("yes", True), ("0", False)])
def test_comfy_cpu_is_auto_or_a_boolean(raw, value):
    assert Settings.from_env({"COMFY_CPU": raw}).comfy_cpu == value


def test_secret_values_never_appear_in_errors_or_public_view():
    s = Settings.from_env({"WORKER_PRIVATE_KEY_B64": "c2VjcmV0", "HF_TOKEN": "hf_abc"})
    shown = s.public_dict()
    assert shown["WORKER_PRIVATE_KEY_B64"] == "<set>" and shown["HF_TOKEN"] == "<set>"
    assert "c2VjcmV0" not in str(shown)


def test_bad_setting_stops_start_up_with_one_line():
    proc = subprocess.run([sys.executable, "-m", "services", "settings"], cwd=REPO_ROOT,
                          env={"OUTPUT_MODE": "ftp", "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["config error: invalid setting OUTPUT_MODE='ftp': expected one of auto, base64, gcs, s3"]


def test_every_setting_is_in_readme():
    readme = (REPO_ROOT / "README.md").read_text()
    for setting in SETTINGS:
        for name in setting.env:
            assert f"`{name}`" in readme, f"{name} missing from README's table"
