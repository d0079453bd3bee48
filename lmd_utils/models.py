"""Loading Stable Diffusion pipelines, and the one place that knows latent space from pixel space.

LMD's stage 2 (paper §3.2) runs on an off-the-shelf text-to-image diffusion model; the paper uses Stable
Diffusion 1.5 (and 2.1 in the appendix).  :func:`load_pipeline` returns a diffusers
:class:`~diffusers.StableDiffusionPipeline` for

* any SD 1.x / 2.x checkpoint, by hub id or local folder (``fp16`` on CUDA, ``fp32`` elsewhere; SD 2.x's
  v-prediction is handled by the scheduler, whose ``prediction_type`` comes with the checkpoint);
* ``"tiny"``: random weights built offline from configs (:func:`build_tiny_pipeline`) with SD 1.5's block layout,
  so the authors' layer names (``mid_block.attentions.0``, ``up_blocks.1.attentions.{0,1,2}``,
  ``down_blocks.2.attentions.1``) exist; used by the tests (``build_tiny_pipeline(gligen=True)``: with GLIGEN's
  layers);
* ``"toyworld"``: the pixel-space toy model trained in this repo (``data/toyworld/model``), a
  ``StableDiffusionPipeline`` with ``vae=None`` whose "latents" are images in [-1, 1].

A GLIGEN checkpoint (``gligen/diffusers-generation-text-box``, or a saved ``StableDiffusionGLIGENPipeline`` folder)
loads as a ``StableDiffusionPipeline`` too: same components, its UNet built with GLIGEN's gated self-attention
from its config (:mod:`~lmd_utils.gligen` grounds it).

Every other module asks the helpers here (:func:`vae_scale_factor`, :func:`latent_shape`,
:func:`decode_latents`, :func:`encode_prompts`, :func:`default_resolution`, :func:`initial_noise`) instead of
assuming a VAE, 8× down-sampling, 77 tokens or 768-d embeddings.  SDXL would need a second text encoder and
``added_cond_kwargs`` in the UNet call; nothing here hard-codes SD 1.x sizes, so it can be added later.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Sequence

import torch
import transformers.utils.logging as _transformers_logging


class _NoTorchvisionNotice(logging.Filter):
    """Drops transformers' "`CLIPImageProcessor` requires torchvision ... falling back" notice, printed on every
    import of diffusers where torchvision is absent; we never use those image processors (they belong to the
    safety checker, which we do not load)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision" not in record.getMessage()


for _handler in _transformers_logging.get_logger().handlers:
    _handler.addFilter(_NoTorchvisionNotice())

from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel

from .data import DATA_DIR
from .downloads import DownloadNotAllowed, ModelLoadError, check_download, local_model_folder
from .layout import single_line
from .offline_tokenizer import build_clip_tokenizer, single_token_order

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
#: Where the toy-world training writes its pipeline (relative to the repository root).
TOYWORLD_MODEL_DIR = DATA_DIR / "toyworld" / "model"

#: SD 1.5's scheduler values (its ``scheduler_config.json``), used with DDIM as in the authors' code.
SD_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
)

#: SD 1.5's UNet config (``unet/config.json``): for random-weight full-size smoke tests, never downloaded.
SD15_UNET_CONFIG = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, norm_eps=1e-5, act_fn="silu",
    center_input_sample=False, downsample_padding=1, flip_sin_to_cos=True, freq_shift=0,
    mid_block_scale_factor=1,
)

#: Words that become single tokens in the tiny model's offline tokenizer (any other word is spelt out).
#: The offline tokenizer gives each word a left-to-right merge chain, and chains can steal from each other
#: ("at" before "cat" tokenizes "cat" as "c", "at"); this order (longest first, conflicts moved up) makes every
#: listed word one token.  "green", "three", "street", "forest", "squares" could not join without breaking
#: "realistic"/"without"/"background", so they are spelt out.
TINY_VOCABULARY = (
    "background realistic without table scene above black backpacks triangles backpack triangle picture "
    "bottles laptops circles kitchen bottom middle center bottle laptop chairs orange yellow purple circle "
    "square photo image right below chair books bowls brown white grass beach with left next four five book "
    "bowl cars cats cups dogs blue pink gray room park city the and are top one two six car cat cup dog red "
    "sky an of on in at to is a"
).split()


#: Environment variable that forces a device ("cpu", "cuda", "cuda:1", "mps"); CI sets it to "cpu".
ENV_DEVICE = "LMD_DEVICE"


# -- devices and loading ------------------------------------------------------------------------
class DeviceNotAvailable(RuntimeError):
    """The asked-for device (``cuda``, ``cuda:N``, ``mps``) does not exist on this machine."""


def pick_device(preferred: str | None = None) -> torch.device:
    """``preferred``, else ``$LMD_DEVICE``, else the first available of CUDA → Apple MPS → CPU.

    Raises ``ValueError`` for an unknown name and :class:`DeviceNotAvailable` (a ``RuntimeError``) when the
    asked-for device is not available, rather than silently falling back (a notebook that claims to use the GPU
    must use it).
    """
    name = preferred or os.environ.get(ENV_DEVICE) or None
    if name is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError) as e:
        raise ValueError(f"unknown device {name[:40]!r} (use cpu, cuda, cuda:N or mps)") from e
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {name[:40]!r} (use cpu, cuda, cuda:N or mps)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceNotAvailable(f"device {name!r} asked for, but CUDA is not available here")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceNotAvailable(f"device {name!r} asked for, but this machine has "
                                 f"{torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceNotAvailable(f"device {name!r} asked for, but Apple MPS is not available here")
    return device


def default_dtype(device: torch.device | str) -> torch.dtype:
    """float16 on CUDA (half the memory and time of Stable Diffusion, as the authors run it), float32 elsewhere
    (CPU kernels for float16 are slow, and MPS float16 attention is unreliable in older torch versions)."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def load_pipeline(model: str = DEFAULT_MODEL, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> StableDiffusionPipeline:
    """A ready :class:`StableDiffusionPipeline` on ``device`` (see the module docstring for ``model``).

    ``model`` is ``"tiny"``, ``"toyworld"``, a hub id or a local folder.  A hub id whose weights are not in the
    local cache is downloaded only on a GPU or with ``$LMD_ALLOW_DOWNLOAD=1`` (else
    :class:`~lmd_utils.downloads.DownloadNotAllowed`, an ``OSError``).  The safety checker is not loaded
    (LMD's evaluation detects objects in the raw images).  The pipeline's own progress bar is disabled; our
    :func:`~lmd_utils.sampling.denoise` shows its own.
    """
    device = pick_device(None if device is None else str(device))
    dtype = dtype or default_dtype(device)
    if model == "tiny":
        pipe = build_tiny_pipeline(seed=0).to(dtype=dtype)
    elif model == "toyworld":
        if not (TOYWORLD_MODEL_DIR / "model_index.json").exists():
            raise FileNotFoundError(
                f"the toy-world model is not at {TOYWORLD_MODEL_DIR}; train it first with the toy-world module "
                "(lmd_utils/toyworld), which saves the pipeline there")
        pipe = _from_folder(TOYWORLD_MODEL_DIR, dtype)
    elif (folder := local_model_folder(model)) is not None:
        pipe = _from_folder(folder, dtype)
    else:
        check_download(model, device)  # several GB: not onto a CPU unless $LMD_ALLOW_DOWNLOAD=1 (lmd_utils.downloads)
        with _load_errors(model):
            pipe = StableDiffusionPipeline.from_pretrained(model, **_dtype_kwarg(dtype), safety_checker=None,
                                                           requires_safety_checker=False)
    pipe = pipe.to(device)  # loaded in ``dtype`` already (diffusers keeps any fp32-only modules in fp32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _dtype_kwarg(dtype: torch.dtype) -> dict:
    """diffusers renamed ``torch_dtype`` to ``dtype`` (deprecating the old name); pass whichever it reads."""
    from diffusers.pipelines import pipeline_utils

    return {"dtype": dtype} if "_resolve_dtype" in vars(pipeline_utils) else {"torch_dtype": dtype}


@contextmanager
def _load_errors(model: Any):
    """Turn diffusers' and transformers' many load failures (missing files, wrong configs, corrupt weights)
    into one :class:`ModelLoadError` that names the model."""
    try:
        yield
    except (DownloadNotAllowed, ModelLoadError):
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"cannot load a Stable Diffusion pipeline from {str(model)!r}: "
                             f"{type(e).__name__}: {single_line(e, 200)}") from e


def _from_folder(folder: Path, dtype: torch.dtype) -> StableDiffusionPipeline:
    with _load_errors(folder):
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
        if not isinstance(index, dict):
            raise ValueError("model_index.json is not a JSON object")
    if "XL" in str(index.get("_class_name", "")):
        raise ModelLoadError(f"{folder} is an SDXL pipeline; only SD 1.x/2.x-style pipelines are supported")
    kwargs = dict(**_dtype_kwarg(dtype), safety_checker=None, requires_safety_checker=False)
    vae_entry = index.get("vae")
    if "vae" not in index or not vae_entry or vae_entry[0] is None:  # pixel-space model (the toy world)
        kwargs["vae"] = None
    with _load_errors(folder):
        return StableDiffusionPipeline.from_pretrained(folder, **kwargs)


def build_tiny_pipeline(seed: int = 0, sample_size: int = 32, vocabulary: Sequence[str] = TINY_VOCABULARY,
                        model_max_length: int = 77, pixel_space: bool = False,
                        gligen: bool = False) -> StableDiffusionPipeline:
    """A random-weight SD-1.5-shaped pipeline built offline in about a second (tests and API demos only).

    Same block structure as SD 1.5 (4 down / 4 up blocks, ``layers_per_block=2``, cross-attention in the first
    three down blocks, the mid block and the last three up blocks) with tiny widths; a 2-layer CLIP text
    encoder over :data:`TINY_VOCABULARY`; a 4-block VAE (latent scale 8, 4 latent channels); DDIM with SD's
    scheduler values.  ``sample_size`` is the latent size of the default resolution (32 → 256×256 images).
    ``pixel_space=True`` drops the VAE and gives the UNet 3 channels, like the toy-world model.
    ``gligen=True`` gives the UNet GLIGEN's layers (``attention_type="gated"``: a gated self-attention in every
    transformer block and the ``position_net``) with their gates open (diffusers starts them at ``tanh(0) = 0``, a
    layer that adds nothing, as GLIGEN's training does); its extra weights shift the random draws, so its other
    weights differ from ``gligen=False``'s.  Weights depend only on ``seed``; the global RNG is left untouched.
    """
    channels = 3 if pixel_space else 4
    tokenizer = build_clip_tokenizer(vocabulary, model_max_length=model_max_length)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=sample_size, in_channels=channels, out_channels=channels, layers_per_block=2,
            block_out_channels=(32, 32, 64, 64),
            down_block_types=SD15_UNET_CONFIG["down_block_types"], up_block_types=SD15_UNET_CONFIG["up_block_types"],
            cross_attention_dim=32, attention_head_dim=2, norm_num_groups=8,
            **({"attention_type": "gated"} if gligen else {}),  # GLIGEN's layers
        )
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=model_max_length, projection_dim=32,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ))
        vae = None if pixel_space else AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 8, 16, 16), norm_num_groups=4, sample_size=sample_size * 8,
        )
    for name, gate in unet.named_parameters():
        if name.endswith((".alpha_attn", ".alpha_dense")):  # GLIGEN's gates (only with gligen=True)
            gate.data.fill_(1.0)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=DDIMScheduler(**SD_SCHEDULER_CONFIG), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


# -- latent space vs pixel space ---------------------------------------------------------------
def vae_scale_factor(pipe) -> int:
    """Pixels per latent cell: ``2 ** (VAE blocks - 1)`` (8 for SD), 1 for a pixel-space model (``vae=None``).

    (diffusers' ``pipe.vae_scale_factor`` says 8 when there is no VAE, which is wrong for pixel space.)
    """
    vae = getattr(pipe, "vae", None)
    return 1 if vae is None else 2 ** (len(vae.config.block_out_channels) - 1)


def is_pixel_space(pipe) -> bool:
    return getattr(pipe, "vae", None) is None


def default_resolution(pipe) -> tuple[int, int]:
    """``(height, width)`` in pixels the UNet was trained for: ``unet.config.sample_size × scale``."""
    size = pipe.unet.config.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    f = vae_scale_factor(pipe)
    return int(h) * f, int(w) * f


def latent_shape(pipe, height: int, width: int, batch: int = 1) -> tuple[int, int, int, int]:
    """``(batch, channels, height / f, width / f)`` of the latents for ``height×width`` images."""
    f = vae_scale_factor(pipe)
    if height <= 0 or width <= 0 or height % f or width % f:
        raise ValueError(f"height and width must be positive multiples of {f} for this model, got {height}×{width}")
    return batch, int(pipe.unet.config.in_channels), height // f, width // f


def model_device(pipe) -> torch.device:
    return pipe.unet.device


def model_dtype(pipe) -> torch.dtype:
    return pipe.unet.dtype


#: Seeds a torch generator takes: 0 .. 2**64 - 1.
MAX_SEED = 2 ** 64 - 1


def check_seed(seed: Any) -> int:
    """``seed`` if it is an int in ``0 .. MAX_SEED`` (what :class:`torch.Generator` takes), else ``ValueError``."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"a seed must be an integer from 0 to 2**64-1, not {str(seed)[:40]}")
    return seed


def initial_noise(pipe, batch: int, height: int, width: int, seed: int | Sequence[int],
                  device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Unit Gaussian x_T of :func:`latent_shape`, reproducible on every device.

    Drawn in float32 by a CPU :class:`torch.Generator` and then moved, so the same seed gives the same noise on
    CPU, CUDA and MPS.  ``seed`` may be one int (the whole batch from one generator, like diffusers with one
    generator) or one seed per batch element (each element independent of the batch it is in, which the
    per-box generation needs: box ``i`` keeps its noise whatever the other boxes are).
    The scheduler's ``init_noise_sigma`` is applied by :func:`~lmd_utils.sampling.denoise`, as in diffusers.
    """
    shape = latent_shape(pipe, height, width, batch)
    for s in seed if isinstance(seed, Sequence) else [seed]:
        check_seed(int(s) if hasattr(s, "__index__") and not isinstance(s, bool) else s)
    if isinstance(seed, int):
        noise = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)
    else:
        seeds = list(seed)
        if len(seeds) != batch:
            raise ValueError(f"got {len(seeds)} seeds for a batch of {batch}")
        noise = torch.cat([torch.randn((1, *shape[1:]), generator=torch.Generator("cpu").manual_seed(int(s)),
                                       dtype=torch.float32) for s in seeds])
    return noise.to(device=device or model_device(pipe), dtype=dtype or model_dtype(pipe))


@torch.no_grad()
def encode_prompts(pipe, prompts: str | Sequence[str]) -> torch.Tensor:
    """Text embeddings ``(B, L, D)`` for ``prompts`` (``L`` = the tokenizer's ``model_max_length``).

    Uses the pipeline's own :meth:`~diffusers.StableDiffusionPipeline.encode_prompt` (padding to the maximum
    length, truncation with a warning, textual-inversion and LoRA handling), so our embeddings equal the ones
    ``pipe(prompt)`` uses.  The empty string gives the unconditional embedding for classifier-free guidance.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}")
    embeds, _ = pipe.encode_prompt(prompts, model_device(pipe), 1, False)
    return embeds


@torch.no_grad()
def decode_latents(pipe, latents: torch.Tensor) -> torch.Tensor:
    """Images ``(B, 3, H, W)``, float32 in [0, 1] on the CPU, from final latents.

    With a VAE: ``vae.decode(z / scaling_factor (+ shift))``; in pixel space the latents are the image in
    [-1, 1] already.
    """
    if latents.ndim != 4:
        raise ValueError(f"latents must be (B, C, h, w), got {tuple(latents.shape)}")
    vae = getattr(pipe, "vae", None)
    if vae is None:
        images = latents
    else:
        z = latents.to(device=vae.device, dtype=vae.dtype) / vae.config.scaling_factor
        shift = getattr(vae.config, "shift_factor", None)
        if shift:
            z = z + shift
        images = vae.decode(z).sample
    return (images.float() / 2 + 0.5).clamp(0, 1).cpu()


def to_pil(images: torch.Tensor) -> list:
    """PIL images from a ``(B, 3, H, W)`` (or ``(3, H, W)``) float tensor in [0, 1]."""
    from diffusers.image_processor import VaeImageProcessor

    if images.ndim == 3:
        images = images[None]
    return VaeImageProcessor.numpy_to_pil(VaeImageProcessor.pt_to_numpy(images.detach().float().cpu().clamp(0, 1)))


def batch_embeds(embeds: torch.Tensor, batch: int, name: str, device, dtype) -> torch.Tensor:
    """``embeds`` ``(B or 1, L, D)`` for a batch of ``batch`` (one embedding expanded), on ``device`` in ``dtype``."""
    if embeds.ndim != 3:
        raise ValueError(f"{name} must be (B, L, D), got {tuple(embeds.shape)}")
    if embeds.shape[0] == 1 and batch > 1:
        embeds = embeds.expand(batch, -1, -1)
    if embeds.shape[0] != batch:
        raise ValueError(f"{name} has batch {embeds.shape[0]} but the latents have {batch}")
    return embeds.to(device=device, dtype=dtype)


def scheduler_step_kwargs(scheduler, generator, eta: float) -> dict[str, Any]:
    """``eta``/``generator`` for schedulers whose ``step`` takes them (as diffusers' pipelines do)."""
    params = set(inspect.signature(scheduler.step).parameters)
    kwargs: dict[str, Any] = {}
    if "eta" in params:
        kwargs["eta"] = eta
    if "generator" in params:
        kwargs["generator"] = generator
    return kwargs


def scheduler_copy(pipe, scheduler=None, default=DDIMScheduler):
    """A fresh scheduler (no step state) of ``scheduler``'s class and config, else ``default`` with the pipe's config.

    The authors sample with DDIM; SD 1.5 ships PNDM, so by default we build DDIM from the checkpoint's
    scheduler config (which carries its betas and ``prediction_type``, e.g. v-prediction for SD 2.x).
    """
    if scheduler is not None:
        return type(scheduler).from_config(scheduler.config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # config keys of another scheduler class are ignored on purpose
        return default.from_config(pipe.scheduler.config)


def build_random_pipeline(model: str = "sd15", tiny: bool = False, device: torch.device | str = "cpu",
                          dtype: torch.dtype = torch.float32, seed: int = 0,
                          extra_words: Sequence[str] = ()) -> StableDiffusionPipeline:
    """A random-weight SD 1.5 or SD 2.1-768 pipeline built from the published configs, nothing downloaded.

    ``"sd15"``: SD 1.5's UNet (:data:`SD15_UNET_CONFIG`, 859.5 M parameters) and a CLIP ViT-L/14 text encoder
    (12 layers, 768 wide, 123.1 M); ``"sd21"``: SD 2.1-768's UNet (96×96 latents, 1024-d cross-attention, 5/10/20/20
    heads, linear projections, upcast attention; 865.9 M), an OpenCLIP ViT-H text encoder (23 layers, 1024 wide,
    340.4 M) and v-prediction.  Both: SD's VAE (83.7 M), DDIM with SD's scheduler values, and the offline tokenizer
    over :data:`TINY_VOCABULARY` plus ``extra_words`` (e.g. the words of the authors' negative prompts; the 49 408-row
    embedding table is kept).  ``tiny=True`` keeps every structural choice at test widths (128×128 images).  Weights are initialised on
    ``device`` (``"meta"``: no memory, for parameter counts), then cast to ``dtype``.  For GPU checks
    (``benchmarks/gpu_check.py``): random weights tell speed, memory and finiteness, never image quality.
    """
    if model not in ("sd15", "sd21"):
        raise ValueError(f"model must be 'sd15' or 'sd21', got {model!r}")
    sd21 = model == "sd21"
    tokenizer = build_clip_tokenizer(single_token_order([*TINY_VOCABULARY, *extra_words]))
    unet = dict(SD15_UNET_CONFIG)
    text = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                projection_dim=768, hidden_act="quick_gelu")
    vae = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32)
    if sd21:
        unet.update(sample_size=96, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
                    use_linear_projection=True, upcast_attention=True)
        text.update(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                    projection_dim=512, hidden_act="gelu")
    if tiny:
        unet.update(sample_size=16, block_out_channels=(32, 32, 64, 64), cross_attention_dim=32, norm_num_groups=8,
                    attention_head_dim=(1, 2, 2, 2) if sd21 else 2)
        text.update(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, projection_dim=32)
        vae.update(block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4)
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        parts = dict(
            unet=UNet2DConditionModel(**unet),
            text_encoder=CLIPTextModel(CLIPTextConfig(
                **text, vocab_size=49408, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)),
            vae=AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, sample_size=unet["sample_size"] * 8,
                              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                              **vae))
    cast = {torch.float32: "float", torch.float16: "half", torch.bfloat16: "bfloat16"}[dtype]
    for part in parts.values():  # nn.Module's casts (diffusers' .to(dtype) warns of fp32-only modules; there are none)
        getattr(part, cast)()
    scheduler = DDIMScheduler(**{**SD_SCHEDULER_CONFIG, "prediction_type": "v_prediction" if sd21 else "epsilon"})
    pipe = StableDiffusionPipeline(**parts, tokenizer=tokenizer, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe
