"""When ComfyUI gets `--cpu`: device nodes in a folder that stands in for /dev."""
import pytest

from services.gpu import device


def test_linux_without_gpu_nodes_has_no_gpu(tmp_path):
    (tmp_path / "null").touch()
    (tmp_path / "nvidia-uvm").touch()  # a driver module's node, not a GPU this machine was given
    assert device.has_gpu(tmp_path, "linux") is False


@pytest.mark.parametrize("node", ["nvidiactl", "nvidia0", "nvidia3", "kfd", "dxg"])
def test_any_gpu_node_counts(tmp_path, node):
    (tmp_path / node).touch()
    assert device.has_gpu(tmp_path, "linux") is True


def test_macos_is_left_to_comfyui(tmp_path):
    assert device.has_gpu(tmp_path, "darwin") is True
    assert device.comfy_args(["--lowvram"], "auto", tmp_path, "darwin") == ["--lowvram"]


@pytest.mark.parametrize("choice,gpu,expected", [
    ("auto", False, ["--lowvram", "--cpu"]),
    ("auto", True, ["--lowvram"]),
    (True, True, ["--lowvram", "--cpu"]),
    (False, False, ["--lowvram"]),
])
def test_cpu_flag_follows_the_choice_and_the_machine(tmp_path, choice, gpu, expected):
    if gpu:
        (tmp_path / "nvidiactl").touch()
    assert device.comfy_args(["--lowvram"], choice, tmp_path, "linux") == expected


@pytest.mark.parametrize("choice", ["auto", True, False])
def test_cpu_flag_is_never_given_twice_nor_taken_away(tmp_path, choice):
    assert device.comfy_args(["--cpu", "--lowvram"], choice, tmp_path, "linux") == ["--cpu", "--lowvram"]
