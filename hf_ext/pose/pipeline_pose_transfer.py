"""`PoseTransferPipeline`: a person image and a target pose in, that person in the pose out.

The pipeline wraps a `PoseTransferGenerator` (one feed-forward pass, no denoising loop) with
the input handling a user needs: images of any mode and size, poses as keypoints, OpenPose
JSON, rendered pose images or person images, batches, and videos from pose sequences.

This file imports only torch, numpy, PIL, diffusers (and its huggingface_hub) and its two sibling files by relative
import, because saved pipelines ship it as remote code: a folder written by
`save_pretrained` loads with `PoseTransferPipeline.from_pretrained(folder)` where this package
is installed, and with `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`
where it is not.
"""

import importlib
import json
import os
import shutil
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput, logging
from huggingface_hub import create_repo

from .modeling_pose_transfer import PoseTransferGenerator
from .pose_encoding import (
    NUM_KEYPOINTS,
    keypoints_from_skeleton,
    normalize_keypoints,
    render_heatmaps,
    rescale_keypoints,
)


logger = logging.get_logger(__name__)

# The layout `save_pretrained` writes so the folder also loads as remote code: the pipeline
# and the files it imports at the root, the model code in the generator's folder.
_PIPELINE_FILE = "pipeline_pose_transfer.py"
_MODEL_FILE = "modeling_pose_transfer.py"
_CODE_FILES = (_PIPELINE_FILE, _MODEL_FILE, "pose_encoding.py")
# A rendered pose image is a stick figure on black; a photo of a person is not mostly black.
_SKELETON_BLACK_FRACTION = 0.5
# Transparent pixels become the uniform mid-grey background people are segmented onto for training.
_TRANSPARENT_BACKGROUND = 128 / 255


@dataclass
class PoseTransferPipelineOutput(BaseOutput):
    """
    Args:
        images (`list[PIL.Image.Image]`, `np.ndarray` or `torch.Tensor`):
            The generated images: a list of PIL images, a (batch, height, width, 3) array in [0, 1] or a
            (batch, 3, height, width) tensor in [0, 1].
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor


def _is_keypoints(value) -> bool:
    """A pose given as numbers: an (18, k) array or tensor (k = 2 or 3 when valid) or a nested list."""
    if isinstance(value, (np.ndarray, torch.Tensor)):
        # 18 rows of a few numbers are keypoints (a wrong column count is reported as such), not an image.
        return value.ndim == 2 and value.shape[0] == NUM_KEYPOINTS and value.shape[1] <= 4
    if isinstance(value, (list, tuple)) and len(value) == NUM_KEYPOINTS:
        return all(isinstance(p, (list, tuple, np.ndarray)) and len(p) in (2, 3) for p in value)
    return False


def _is_single_pose(value) -> bool:
    if isinstance(value, dict) or _is_keypoints(value):
        return True
    if isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 3 and value.shape[1] == NUM_KEYPOINTS:
        return value.shape[2] > 4  # (batch, 18, 2|3) is a batch of keypoints
    return _is_single_image(value)


def _is_single_image(value) -> bool:
    if isinstance(value, PIL.Image.Image):
        return True
    if isinstance(value, np.ndarray):
        return value.ndim == 2 or (value.ndim == 3 and value.shape[-1] in (1, 3, 4))
    if isinstance(value, torch.Tensor):
        return value.ndim == 3 or (value.ndim == 2 and not _is_keypoints(value))
    return False


def _as_list(value, name: str, is_single) -> list:
    """Splits a single item or a batch (list, or an array/tensor with a leading batch axis) into a list."""
    if is_single(value):
        return [value]
    if isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim >= 3:
        return list(value)
    if isinstance(value, (list, tuple)) and len(value) > 0:
        return list(value)
    raise TypeError(f"{name} must be one item or a non-empty list/batch of them, got {type(value).__name__}")


def _image_to_array(image, name: str) -> np.ndarray:
    """Any supported image -> float32 RGB (H, W, 3) array in [0, 1].

    Grayscale and palette images become RGB; transparent ones (RGBA, LA, palette with transparency) are
    composited onto mid-grey, the uniform background the training data uses. Float arrays and tensors must
    be in [0, 1]; tensors are channels-first.
    """
    if isinstance(image, PIL.Image.Image):
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            image = image.convert("RGBA")
        elif image.mode != "RGB":
            image = image.convert("RGB")
        image = np.asarray(image)
    if isinstance(image, torch.Tensor):
        if image.ndim == 3 and image.shape[0] in (1, 3, 4):
            image = image.permute(1, 2, 0)
        image = image.detach().cpu().float().numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name} must be a PIL image, numpy array or torch tensor, got {type(image).__name__}")
    array = image[..., None] if image.ndim == 2 else image
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"{name} must be an image of shape (H, W), (H, W, 1|3|4) or, as a tensor, (1|3|4, H, W); "
            f"got shape {tuple(image.shape)}"
        )
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    elif not np.issubdtype(array.dtype, np.floating) or np.nanmin(array) < 0 or np.nanmax(array) > 1:
        raise ValueError(f"{name} must be uint8 in [0, 255] or float in [0, 1], got dtype {array.dtype}")
    if array.shape[-1] == 4:
        alpha = array[..., 3:]
        array = array[..., :3] * alpha + _TRANSPARENT_BACKGROUND * (1 - alpha)
    elif array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return np.ascontiguousarray(array, dtype=np.float32)


def _openpose_keypoints(pose: dict, name: str) -> np.ndarray:
    """The first person's `pose_keypoints_2d` of an OpenPose JSON dict, as an (18, 3) array."""
    person = pose
    if "people" in pose:
        if not pose["people"]:
            raise ValueError(f"{name} is an OpenPose JSON dict with no person in 'people'")
        if len(pose["people"]) > 1:
            logger.warning(f"{name} has {len(pose['people'])} people; using the first")
        person = pose["people"][0]
    values = np.asarray(person.get("pose_keypoints_2d", []), dtype=np.float64)
    if values.size != NUM_KEYPOINTS * 3:
        raise ValueError(
            f"{name}['pose_keypoints_2d'] must hold {NUM_KEYPOINTS * 3} numbers (x, y, confidence per COCO-18 "
            f"joint), got {values.size}"
        )
    return values.reshape(NUM_KEYPOINTS, 3)


def _estimate_keypoints(image: np.ndarray, name: str) -> np.ndarray:
    # The estimator lives in the full package (optional extra `pose`); this file cannot import it
    # statically because it also runs as remote code without the package.
    try:
        estimate = importlib.import_module("hf_ext.pose.keypoints").estimate_keypoints
        return estimate(PIL.Image.fromarray(np.round(image * 255).astype(np.uint8)))
    except ImportError as error:
        raise ImportError(
            f"{name} is a person image, whose pose needs the keypoint estimator of `hf-ext[pose]` "
            f"({error}); or pass the pose as (18, 2) keypoints, an OpenPose JSON dict or a rendered pose image"
        ) from error


def _pose_to_keypoints(pose, frame_size: tuple[int, int], name: str) -> tuple[np.ndarray, tuple[int, int]]:
    """Any supported pose -> ((18, 2) keypoints with NaN for missing joints, (height, width) of their frame).

    Keypoints and OpenPose dicts are in pixels of `frame_size`; an image (a rendered pose or a photo of a
    person) is its own frame.
    """
    if isinstance(pose, dict):
        return normalize_keypoints(_openpose_keypoints(pose, name), *frame_size, name=name), frame_size
    if _is_keypoints(pose):
        return normalize_keypoints(pose, *frame_size, name=name), frame_size
    if not _is_single_image(pose):
        raise ValueError(
            f"{name} must be (18, 2) keypoints, an OpenPose JSON dict, a rendered pose image or a person image; "
            f"got {type(pose).__name__} {tuple(getattr(pose, 'shape', ()))}"
        )
    image = _image_to_array(pose, name)
    size = image.shape[:2]
    pixels = np.round(image * 255).astype(np.uint8)
    if (pixels.max(axis=-1) < 16).mean() >= _SKELETON_BLACK_FRACTION:
        keypoints = keypoints_from_skeleton(pixels)
        if np.isnan(keypoints).all():
            raise ValueError(f"{name} looks like a rendered pose image (mostly black) but no joint colour was found")
        return keypoints, size
    return normalize_keypoints(_estimate_keypoints(image, name), *size, name=name), size


class PoseTransferPipeline(DiffusionPipeline):
    r"""
    Pipeline for pose-guided appearance transfer: renders the person of a reference image in a target pose.

    This model inherits from [`DiffusionPipeline`]. Check the superclass documentation for the generic methods
    implemented for all pipelines (downloading, saving, running on a particular device, etc.).

    Parameters:
        generator ([`PoseTransferGenerator`]):
            The progressive encoder-decoder; its current stage sets the output resolution.
    """

    model_cpu_offload_seq = "generator"

    # Annotated as `ModelMixin`: as remote code, diffusers executes the model file a second time for the
    # component, so the generator's class is not the one this file imported, and a `PoseTransferGenerator`
    # annotation would make every load warn about a type mismatch.
    def __init__(self, generator: ModelMixin):
        super().__init__()
        self.register_modules(generator=generator)
        # Images reach the generator already resized; the processor only converts outputs.
        self.image_processor = VaeImageProcessor(vae_scale_factor=1, do_resize=False)

    # ----------------------------------------------------------------------------------
    # Inputs
    # ----------------------------------------------------------------------------------
    def prepare_inputs(
        self, reference_image, target_pose, reference_pose=None, resolution=None, target_pose_size=None
    ):
        """Validates and converts a batch to the generator's three input tensors.

        Args: as in `__call__`.

        Returns:
            `tuple[torch.Tensor, torch.Tensor, torch.Tensor]`: reference image (B, 3, h, w) in [-1, 1], reference
            and target pose heatmaps (B, 18, h, w), at `resolution` (default: the generator's current stage).
        """
        generator = self.generator
        height, width = (
            generator.resolution
            if resolution is None
            else generator.resolutions[generator.stage_for_resolution(resolution)]
        )
        images = _as_list(reference_image, "reference_image", _is_single_image)
        targets = _as_list(target_pose, "target_pose", _is_single_pose)
        references = (
            [None] * len(images)
            if reference_pose is None
            else _as_list(reference_pose, "reference_pose", _is_single_pose)
        )
        if not len(images) == len(targets) == len(references):
            raise ValueError(
                f"reference_image has {len(images)} images but target_pose has {len(targets)} poses"
                + ("" if reference_pose is None else f" and reference_pose has {len(references)}")
                + "; pass one pose per image"
            )
        if target_pose_size is not None and (
            not isinstance(target_pose_size, (tuple, list)) or len(target_pose_size) != 2
        ):
            raise ValueError(f"target_pose_size must be a (height, width) pair, got {target_pose_size!r}")

        pixels, reference_maps, target_maps = [], [], []
        for index, (image, target, reference) in enumerate(zip(images, targets, references)):
            array = _image_to_array(image, f"reference_image[{index}]")
            image_size = array.shape[:2]
            if reference is None:
                reference_keypoints = normalize_keypoints(
                    _estimate_keypoints(array, f"reference_image[{index}] (reference_pose=None)"),
                    *image_size,
                    name=f"reference_image[{index}] estimate",
                )
                reference_frame = image_size
            else:
                reference_keypoints, reference_frame = _pose_to_keypoints(
                    reference, image_size, f"reference_pose[{index}]"
                )
            frame = tuple(target_pose_size) if target_pose_size is not None else image_size
            target_keypoints, target_frame = _pose_to_keypoints(target, frame, f"target_pose[{index}]")
            tensor = torch.from_numpy(array).permute(2, 0, 1)[None]
            # Antialiased bicubic, as PIL resizes the training images.
            tensor = F.interpolate(tensor, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
            pixels.append(tensor[0].clamp(0, 1) * 2 - 1)
            for keypoints, source, maps in (
                (reference_keypoints, reference_frame, reference_maps),
                (target_keypoints, target_frame, target_maps),
            ):
                keypoints = rescale_keypoints(keypoints, tuple(source), (height, width))
                maps.append(torch.from_numpy(render_heatmaps(keypoints, height, width)))
        return torch.stack(pixels), torch.stack(reference_maps), torch.stack(target_maps)

    # ----------------------------------------------------------------------------------
    # Generation
    # ----------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        reference_image,
        target_pose,
        reference_pose=None,
        resolution: tuple[int, int] | None = None,
        target_pose_size: tuple[int, int] | None = None,
        batch_size: int = 8,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> PoseTransferPipelineOutput | tuple:
        r"""
        The call function to the pipeline for generation.

        Args:
            reference_image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or a list of them):
                The person(s) to render. PIL images of any mode (grayscale and palette become RGB, transparency
                is composited onto mid-grey), uint8 arrays in [0, 255] or float arrays in [0, 1] of shape
                (H, W[, 1|3|4]), tensors (C, H, W) in [0, 1]; a list or a leading batch axis makes a batch.
                Images are resized to the output resolution.
            target_pose (one pose or a list with one per image):
                Each pose is (18, 2) or (18, 3) keypoints (x, y[, confidence]) in pixels of `target_pose_size`
                (default: the reference image's size), with NaN or -1 for missing joints; an OpenPose JSON dict
                (`{"people": [{"pose_keypoints_2d": [...]}]}`); a rendered pose image (coloured skeleton on black,
                as drawn by `render_skeleton`); or a photo of a person when the estimator is installed.
            reference_pose (one pose or a list, *optional*):
                The pose of each reference image, in the reference image's pixels; estimated from the image when
                `None` (needs the `pose` extra).
            resolution (`tuple[int, int]`, *optional*):
                (height, width) to generate at; any stage the generator has grown to. Defaults to its current stage.
            target_pose_size (`tuple[int, int]`, *optional*):
                (height, width) of the frame the target keypoints and OpenPose dicts refer to.
            batch_size (`int`, *optional*, defaults to 8):
                How many images go through the generator at once.
            output_type (`str`, *optional*, defaults to `"pil"`):
                `"pil"`, `"np"` (array in [0, 1]) or `"pt"` (tensor in [0, 1]).
            return_dict (`bool`, *optional*, defaults to `True`):
                Return a [`PoseTransferPipelineOutput`] instead of a plain tuple.

        Returns:
            [`PoseTransferPipelineOutput`] or `tuple`: the images (the first element of the tuple).
        """
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type={output_type!r} is not supported; expected 'pil', 'np' or 'pt'")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        images, reference_maps, target_maps = self.prepare_inputs(
            reference_image, target_pose, reference_pose, resolution, target_pose_size
        )

        dtype = next(self.generator.parameters()).dtype
        outputs = []
        chunks = range(0, images.shape[0], batch_size)
        for start in self.progress_bar(chunks):
            batch = [
                t[start : start + batch_size].to(self._execution_device, dtype)
                for t in (images, reference_maps, target_maps)
            ]
            outputs.append(self.generator(*batch).sample.float().cpu())
        image = self.image_processor.postprocess(torch.cat(outputs), output_type=output_type)

        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return PoseTransferPipelineOutput(images=image)

    @torch.no_grad()
    def generate_video(
        self,
        reference_image,
        pose_sequence,
        reference_pose=None,
        output_path: str | os.PathLike | None = None,
        fps: float = 10.0,
        **kwargs,
    ) -> list[PIL.Image.Image]:
        r"""
        Renders the reference person in every pose of a sequence, frame by frame.

        Args:
            reference_image: one image, as in `__call__`.
            pose_sequence (`list`): the poses, one per frame, in any form `__call__` accepts.
            reference_pose (*optional*): the reference image's pose; estimated once when `None`.
            output_path (`str` or `os.PathLike`, *optional*):
                Where to write the video: `.gif` (written with PIL) or `.mp4` (needs `imageio` with an ffmpeg
                backend, from the `pose` extra).
            fps (`float`, *optional*, defaults to 10.0): frames per second of the written file.
            **kwargs: passed to `__call__` (`resolution`, `target_pose_size`, `batch_size`).

        Returns:
            `list[PIL.Image.Image]`: the frames.
        """
        if output_path is not None and os.path.splitext(str(output_path))[1].lower() not in (".gif", ".mp4"):
            raise ValueError(f"output_path={str(output_path)!r} must end in .gif or .mp4")
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps!r}")
        poses = list(pose_sequence)
        if not poses:
            raise ValueError("pose_sequence is empty; expected one pose per frame")
        if _as_list(reference_image, "reference_image", _is_single_image).__len__() != 1:
            raise ValueError("generate_video takes one reference_image")
        array = _image_to_array(reference_image, "reference_image")
        if reference_pose is None:
            # Estimated once, not per frame.
            reference_pose = _estimate_keypoints(array, "reference_image (reference_pose=None)")
        frames = self([array] * len(poses), poses, [reference_pose] * len(poses), output_type="pil", **kwargs).images
        if output_path is not None:
            _write_video(frames, str(output_path), fps)
        return frames

    # ----------------------------------------------------------------------------------
    # Saving and loading
    # ----------------------------------------------------------------------------------
    def save_pretrained(
        self, save_directory: str | os.PathLike, safe_serialization: bool = True, push_to_hub: bool = False, **kwargs
    ):
        """Saves the pipeline (safetensors + JSON) with its code, so the folder also loads as remote code.

        Args:
            save_directory (`str` or `os.PathLike`): the folder to write.
            safe_serialization (`bool`, *optional*, defaults to `True`): must stay `True` (safetensors only).
            push_to_hub (`bool`, *optional*, defaults to `False`): also upload the folder, in one commit, to
                `repo_id` (default: the folder's name); `token`, `private`, `commit_message` and `create_pr` are
                taken from `kwargs`. A README.md already in the folder (a model card) is uploaded with it.
            **kwargs: passed to `DiffusionPipeline.save_pretrained` (e.g. `variant`).
        """
        if not safe_serialization:
            raise ValueError("safe_serialization=False is not supported: pipelines are saved as safetensors")
        hub_options = {
            k: kwargs.pop(k) for k in ("repo_id", "token", "private", "commit_message", "create_pr") if k in kwargs
        }
        super().save_pretrained(save_directory, safe_serialization=True, **kwargs)
        source = os.path.dirname(os.path.abspath(__file__))
        for name in _CODE_FILES:
            shutil.copyfile(os.path.join(source, name), os.path.join(save_directory, name))
        shutil.copyfile(os.path.join(source, _MODEL_FILE), os.path.join(save_directory, "generator", _MODEL_FILE))
        # Name the shipped code files instead of this package's modules, so diffusers finds them.
        index_path = os.path.join(save_directory, self.config_name)
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)
        index["_class_name"] = [_PIPELINE_FILE[:-3], type(self).__name__]
        index["generator"] = [_MODEL_FILE[:-3], type(self.generator).__name__]
        with open(index_path, "w", encoding="utf-8") as f:
            json.dump(index, f, indent=2, sort_keys=True)
        if push_to_hub:
            repo_id = hub_options.get("repo_id", os.path.basename(os.path.normpath(save_directory)))
            repo_id = create_repo(
                repo_id, exist_ok=True, private=hub_options.get("private"), token=hub_options.get("token")
            ).repo_id
            self._upload_folder(
                save_directory,
                repo_id,
                token=hub_options.get("token"),
                commit_message=hub_options.get("commit_message"),
                create_pr=hub_options.get("create_pr", False),
            )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs):
        """Loads a pipeline written by `save_pretrained` (local folder or Hub id) without running shipped code.

        Args:
            pretrained_model_name_or_path (`str` or `os.PathLike`): folder or Hub repository id.
            **kwargs: `generator` (a `PoseTransferGenerator` to use instead of the saved one) or Hub and loading
                options passed to `ModelMixin.from_pretrained` (`cache_dir`, `revision`, `token`,
                `local_files_only`, `torch_dtype`, ...).

        Returns:
            `PoseTransferPipeline`
        """
        # DiffusionPipeline.from_pretrained would import the shipped pipeline file as remote code; this
        # class is already imported, so only the weights are loaded.
        hub_kwargs = {k: kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only") if k in kwargs}
        index = cls.load_config(pretrained_model_name_or_path, **hub_kwargs)
        class_name = index.get("_class_name")
        class_name = class_name[-1] if isinstance(class_name, (list, tuple)) else class_name
        if class_name != cls.__name__:
            raise ValueError(
                f"{pretrained_model_name_or_path} holds a {class_name}, not a {cls.__name__}; load it with "
                "DiffusionPipeline.from_pretrained"
            )
        generator = kwargs.pop("generator", None)
        if generator is None:
            generator = PoseTransferGenerator.from_pretrained(
                pretrained_model_name_or_path, subfolder="generator", **kwargs
            )
        return cls(generator=generator)


def _write_video(frames: list[PIL.Image.Image], path: str, fps: float):
    if path.lower().endswith(".gif"):
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=round(1000 / fps), loop=0)
        return
    try:
        imageio = importlib.import_module("imageio.v3")
        imageio.imwrite(path, np.stack([np.asarray(frame) for frame in frames]), fps=fps)
    except (ImportError, OSError, ValueError, RuntimeError) as error:
        raise ValueError(
            f"cannot write {path}: MP4 needs imageio with an ffmpeg or pyav backend (`pip install hf-ext[pose] "
            f"imageio-ffmpeg`); write a .gif instead ({error})"
        ) from error
