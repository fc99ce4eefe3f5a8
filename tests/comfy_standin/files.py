"""Where the stand-in reads and writes files, with ComfyUI's naming and path-safety rules.

Every rule here mirrors what ComfyUI 0.3.64 does, because clients build paths and `/view`
queries from these names: the `{prefix}_{counter:05}_.png` counter, the `name (1).ext`
upload rename, and which `/view` queries are refused with which status.
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
import time
from dataclasses import dataclass, field

# The model folders a ComfyUI 0.3.64 install knows; `/models` lists these names.
MODEL_FOLDERS = (
    "checkpoints", "configs", "loras", "vae", "text_encoders", "diffusion_models",
    "clip_vision", "style_models", "embeddings", "diffusers", "vae_approx", "controlnet",
    "gligen", "upscale_models", "custom_nodes", "hypernetworks", "photomaker",
    "classifiers", "model_patches", "audio_encoders",
)
# Old names still accepted in extra_model_paths.yaml.
LEGACY_FOLDER_NAMES = {"unet": "diffusion_models", "clip": "text_encoders"}
MODEL_EXTENSIONS = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
FOLDER_EXTENSIONS = {"configs": {".yaml"}}


class Refused(Exception):
    """A request for a file that ComfyUI answers with a bare HTTP error status."""

    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


@dataclass(frozen=True)
class Paths:
    """Absolute directories of one stand-in instance."""

    output: str
    input: str
    temp: str
    model_dirs: dict[str, list[str]] = field(default_factory=dict)
    custom_nodes: str = ""

    def by_type(self, kind: str) -> str | None:
        return {"output": self.output, "input": self.input, "temp": self.temp}.get(kind)

    def model_files(self, folder: str) -> list[str]:
        extensions = FOLDER_EXTENSIONS.get(folder, MODEL_EXTENSIONS)
        found = set()
        for root in self.model_dirs.get(folder, []):
            for dirpath, _, filenames in os.walk(root, followlinks=True):
                for name in filenames:
                    if os.path.splitext(name)[1].lower() in extensions:
                        found.add(os.path.relpath(os.path.join(dirpath, name), root))
        return sorted(found)

    def input_images(self) -> list[str]:
        """Files LoadImage offers: plain image files directly in the input folder."""
        names = [n for n in os.listdir(self.input) if os.path.isfile(os.path.join(self.input, n))]
        return sorted(n for n in names if (mimetypes.guess_type(n)[0] or "").startswith("image/"))


def default_model_dirs(base: str) -> dict[str, list[str]]:
    return {name: [os.path.join(base, "models", name)] for name in MODEL_FOLDERS}


def _inside(root: str, path: str) -> bool:
    return os.path.commonpath((root, os.path.abspath(path))) == root


def split_annotation(paths: Paths, name: str) -> tuple[str, str | None]:
    """`name.png [output]` picks a folder by suffix, as ComfyUI's annotated file names do."""
    for kind in ("output", "input", "temp"):
        suffix = f"[{kind}]"
        if name.endswith(suffix):
            return name[: -len(suffix) - 1], paths.by_type(kind)
    return name, None


def annotated_path(paths: Paths, name: str) -> str:
    """The path a LoadImage `image` value names, built as ComfyUI's
    `folder_paths.get_annotated_filepath` builds it: the suffix picks the folder (input when none)
    and nothing keeps the name inside it: `../x`, an absolute path or any subfolder (another
    job's uploads) all resolve. Isolating jobs is the caller's business (services/jobs/file_inputs.py)."""
    name, folder = split_annotation(paths, name)
    return os.path.join(folder or paths.input, name)


def annotated_path_exists(paths: Paths, name: str) -> bool:
    """`folder_paths.exists_annotated_filepath`: only whether the path exists (a folder counts;
    a name with NUL does not: os.path.exists answers False)."""
    return os.path.exists(annotated_path(paths, name))


def file_digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@dataclass(frozen=True)
class SaveTarget:
    folder: str
    filename: str
    counter: int
    subfolder: str


def save_target(prefix: str, output_dir: str, width: int, height: int) -> SaveTarget:
    """Folder, base name and first free counter for `{prefix}_{counter:05}_.ext` files.

    The counter continues after the highest one already on disk for this prefix (ComfyUI
    never reuses a number). A prefix with `/` saves into a subfolder; one that leaves the
    output folder raises the same message ComfyUI raises.
    """
    if "%" in prefix:
        prefix = _expand_prefix(prefix, width, height)
    subfolder = os.path.dirname(os.path.normpath(prefix))
    filename = os.path.basename(os.path.normpath(prefix))
    folder = os.path.join(output_dir, subfolder)
    if not _inside(output_dir, folder):
        common = os.path.commonpath((output_dir, os.path.abspath(folder)))
        raise Exception(
            "**** ERROR: Saving image outside the output folder is not allowed."
            f"\n full_output_folder: {os.path.abspath(folder)}"
            f"\n         output_dir: {output_dir}"
            f"\n         commonpath: {common}"
        )
    os.makedirs(folder, exist_ok=True)
    counters = [_counter_of(name, filename) for name in os.listdir(folder)]
    return SaveTarget(folder, filename, max(filter(None, counters), default=0) + 1, subfolder)


def _counter_of(existing: str, filename: str) -> int | None:
    """The counter of `existing` if it was saved under `filename`, else None."""
    stem = existing[: len(filename) + 1]
    if os.path.normcase(stem[:-1]) != os.path.normcase(filename) or stem[-1:] != "_":
        return None
    try:
        return int(existing[len(filename) + 1:].split("_")[0])
    except ValueError:
        return 0


def _expand_prefix(prefix: str, width: int, height: int) -> str:
    now = time.localtime()
    values = {
        "%width%": str(width), "%height%": str(height), "%year%": str(now.tm_year),
        "%month%": f"{now.tm_mon:02}", "%day%": f"{now.tm_mday:02}",
        "%hour%": f"{now.tm_hour:02}", "%minute%": f"{now.tm_min:02}",
        "%second%": f"{now.tm_sec:02}",
    }
    for token, value in values.items():
        prefix = prefix.replace(token, value)
    return prefix


def view_path(paths: Paths, filename: str, subfolder: str | None, kind: str) -> str:
    """The file `/view` serves, or Refused with ComfyUI's status for that query.

    The order of the checks matters: it decides which status a query that breaks
    several rules gets (e.g. `..` in the name wins over a bad type).
    """
    filename, folder = split_annotation(paths, filename)
    if not filename or filename[0] == "/" or ".." in filename:
        raise Refused(400)
    folder = folder or paths.by_type(kind)
    if folder is None:
        raise Refused(400)
    if subfolder is not None:
        wanted = os.path.join(folder, subfolder)
        if not _inside(folder, wanted):
            raise Refused(403)
        folder = wanted
    path = os.path.join(folder, os.path.basename(filename))
    if not os.path.isfile(path):
        raise Refused(404)
    return path


def upload_path(upload_dir: str, subfolder: str, filename: str, content: bytes,
                overwrite: bool) -> tuple[str, str, bool]:
    """Where an upload lands: (path, name to report, whether that file already holds it).

    Without overwrite, a different file of the same name makes ComfyUI pick
    `name (1).ext`, `name (2).ext`, ...; identical content reuses the existing name.
    """
    folder = os.path.join(upload_dir, os.path.normpath(subfolder))
    path = os.path.abspath(os.path.join(folder, filename))
    if os.path.commonpath((upload_dir, path)) != upload_dir:
        raise Refused(400)
    os.makedirs(folder, exist_ok=True)
    if overwrite:
        return path, filename, False
    stem, ext = os.path.splitext(filename)
    digest = hashlib.sha256(content).hexdigest()
    attempt = 1
    while os.path.exists(path):
        if file_digest(path) == digest:
            return path, filename, True
        filename = f"{stem} ({attempt}){ext}"
        path = os.path.join(folder, filename)
        attempt += 1
    return path, filename, False
