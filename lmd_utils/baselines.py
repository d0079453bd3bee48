"""The paper's comparison methods (Table 2), on the one denoising loop, from the same layout and seed as LMD.

* **Backward guidance** (Chen et al. 2023, "training-free layout control"; the authors' run of it:
  ``generation/backward_guidance.py``): ONE pass of the overall prompt whose phrases are guided into their boxes
  by the same energy as LMD's, with the authors' settings for it (their head-summed loss, scale 30, threshold
  0.2, up to 5 gradient steps on each of the first 10 of 50 steps): no per-box generation, no composition, no
  attention transfer.  What LMD adds on top of it is exactly what the comparison measures.
* **MultiDiffusion** (Bar-Tal et al. 2023; ``generation/multidiffusion.py``): the background prompt on the whole
  canvas and each box's caption on its box, denoised as ONE batch (one element per prompt, all from the same z_T)
  whose latents are fused after every step into their mask-weighted mean (:class:`FuseRegions`).  For the first
  40 % of the steps (the authors' 20 of 50) each caption's latent outside its box is replaced by a noised flat
  colour (:class:`Bootstrap`), so that each caption draws its object inside its box.  Every element shares the
  background's negative prompt (their ``indep_uncond=False``).

Both return :class:`BaselineResult`.  BoxDiff, GLIGEN and LMD+ are not implemented yet.

Where these differ from the authors' runs: MultiDiffusion's negative prompt is the layout's plus LMD's overall
negative prompt (theirs adds "headshot, close-up, partial, large, huge, gigantic"); its region masks are the boxes
rounded on the latent grid (:meth:`~lmd_utils.layout.Box.mask`; theirs are drawn in pixels, then resized by
nearest neighbour); its flat bootstrap colours come from a generator seeded with the image seed (theirs from the
global random state).  Backward guidance uses their settings literally (:meth:`GuidanceConfig.authors`).  Neither
is yet checked against their code stage by stage, as LMD is (``make test-reference``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .attention import default_layers
from .composition import composed_pass_guidance, overall_prompt_for
from .config import GuidanceConfig, LMDConfig
from .grammar import join_phrases
from .layout import Layout
from .models import decode_latents, encode_prompts, initial_noise, is_pixel_space
from .pipeline import check_layout
from .sampling import denoise

#: The authors' backward-guidance settings, literal (``generation/backward_guidance.py``: ``overall_loss_scale=30,
#: overall_loss_threshold=0.2, overall_max_iter=5, overall_max_index_step=10`` of 50 steps, the head-summed loss).
BACKWARD_GUIDANCE = GuidanceConfig.authors(loss_scale=30.0, loss_threshold=0.2, iterations=(5,), guidance_steps=10,
                                           layers=())  # () = the model's guidance layers
#: MultiDiffusion's bootstrapping: the first 20 of 50 steps (the authors' ``--multidiffusion_bootstrapping 20``).
BOOTSTRAP_FRACTION = 0.4


@dataclass
class BaselineResult:
    """A baseline's image ``(3, H, W)`` in [0, 1] and what made it."""

    image: torch.Tensor
    method: str
    prompts: list[str]
    negative_prompt: str


def _setup(pipe, layout: Layout, seed: int, config: LMDConfig | None):
    config = config or LMDConfig.for_pipe(pipe)
    layout = check_layout(pipe, layout, config)
    height, width = config.resolution(pipe)
    return config, layout, initial_noise(pipe, 1, height, width, seed), join_phrases(
        layout.negative, config.overall_negative_prompt)


def _plain(pipe, prompt: str, negative: str, noise, config: LMDConfig, method: str, hooks=(), progress=True,
           attention_store=None):
    result = denoise(pipe, noise, encode_prompts(pipe, [prompt]), encode_prompts(pipe, [negative]),
                     config.num_inference_steps, config.guidance_scale, hooks=hooks, progress=progress,
                     attention_store=attention_store)
    return BaselineResult(decode_latents(pipe, result.latents)[0], method, [prompt], negative)


def backward_guidance(pipe, layout: Layout, seed: int = 0, config: LMDConfig | None = None,
                      guidance: GuidanceConfig | None = None, progress: bool = True,
                      attention_store=None) -> BaselineResult:
    """One guided pass of the overall prompt (see the module docstring).  ``guidance`` default:
    :data:`BACKWARD_GUIDANCE` stretched to ``config``'s steps, on the model's guidance layers.
    ``attention_store`` (an :class:`~lmd_utils.attention.AttentionStore`) records the pass's cross-attention."""
    config, layout, noise, negative = _setup(pipe, layout, seed, config)
    prompt, background_end = overall_prompt_for(layout, config.overall_prompt, pipe.tokenizer)
    if not layout.boxes:
        return _plain(pipe, layout.background or layout.prompt, negative, noise, config, "backward-guidance",
                      progress=progress)
    settings = guidance or BACKWARD_GUIDANCE.scaled_to(config.num_inference_steps)
    layers = config.overall_guidance.layers or default_layers(pipe.unet)[0]
    hook = composed_pass_guidance(pipe.tokenizer, layout, prompt, background_end, [], settings.on_layers(layers),
                                  attention_transfer=False, box_rounding=config.box_rounding)
    return _plain(pipe, prompt, negative, noise, config, "backward-guidance", hooks=[hook], progress=progress,
                  attention_store=attention_store)


class FuseRegions:
    """``after_step`` hook: the batch's latents (one per region prompt) → their mask-weighted mean, copied to every
    element.  ``masks``: ``(B, 1, h, w)`` region weights on the latent grid (the background's all ones)."""

    def __init__(self, masks: torch.Tensor) -> None:
        self.masks = masks

    def after_step(self, state) -> torch.Tensor:
        m = self.masks.to(state.latents.device, state.latents.dtype)
        fused = (state.latents * m).sum(0, keepdim=True) / m.sum(0, keepdim=True).clamp_min(1e-8)
        return fused.expand_as(state.latents).clone()


class Bootstrap:
    """``before_step`` hook, for the first ``steps`` steps: each region's latent (elements ``1..``) outside its mask
    becomes ``backgrounds`` (flat colours, as latents) noised to the step's level with the initial noise."""

    def __init__(self, masks: torch.Tensor, backgrounds: torch.Tensor, noise: torch.Tensor, steps: int) -> None:
        self.masks, self.backgrounds, self.noise, self.steps = masks, backgrounds, noise, steps

    def before_step(self, state) -> torch.Tensor | None:
        if state.step >= self.steps or state.latents.shape[0] < 2:
            return None
        x = state.latents.clone()
        m = self.masks[1:].to(x.device, x.dtype)
        bg = state.scheduler.add_noise(self.backgrounds.to(x.device, x.dtype), self.noise.to(x.device, x.dtype),
                                       state.timestep.reshape(1).to(x.device))
        x[1:] = x[1:] * m + bg * (1 - m)
        return x


def region_masks(layout: Layout, height: int, width: int) -> torch.Tensor:
    """``(1 + n, 1, h, w)``: the whole canvas for the background, then each box, a cell belonging to the FIRST box
    that covers it (the authors' ``first_top``)."""
    owner = torch.full((height, width), -1)
    for i in reversed(range(len(layout.boxes))):
        owner[layout.boxes[i].mask(height, width).bool()] = i
    boxes = [(owner == i).float() for i in range(len(layout.boxes))]
    return torch.stack([torch.ones(height, width), *boxes])[:, None]


def flat_colour_latents(pipe, n: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` random flat-colour images as latents (encoded by the VAE; in pixel space the image itself)."""
    colours = torch.rand(n, 3, 1, 1, generator=generator).expand(n, 3, height, width)
    images = colours * 2 - 1
    if is_pixel_space(pipe):
        return images
    vae = pipe.vae
    with torch.no_grad():
        z = vae.encode(images.to(vae.device, vae.dtype)).latent_dist.mean
    return (z * vae.config.scaling_factor).float().cpu()


def multidiffusion(pipe, layout: Layout, seed: int = 0, config: LMDConfig | None = None,
                   bootstrap_fraction: float = BOOTSTRAP_FRACTION, progress: bool = True) -> BaselineResult:
    """Region-based MultiDiffusion on the layout (see the module docstring)."""
    config, layout, noise, negative = _setup(pipe, layout, seed, config)
    if not layout.boxes:  # as generate does
        return _plain(pipe, layout.background or layout.prompt, negative, noise, config, "multidiffusion",
                      progress=progress)
    prompts = [layout.background] + [b.phrase for b in layout.boxes]  # the authors' bg_prompt, then each caption
    h, w = noise.shape[-2:]
    masks = region_masks(layout, h, w)
    height, width = config.resolution(pipe)
    generator = torch.Generator().manual_seed(seed)
    backgrounds = flat_colour_latents(pipe, len(prompts) - 1, height, width, generator)
    steps = round(bootstrap_fraction * config.num_inference_steps)
    batch = noise.expand(len(prompts), *noise.shape[1:]).clone()
    result = denoise(pipe, batch, encode_prompts(pipe, prompts), encode_prompts(pipe, [negative]),
                     config.num_inference_steps, config.guidance_scale,
                     hooks=[Bootstrap(masks, backgrounds, noise.expand_as(backgrounds).clone(), steps),
                            FuseRegions(masks)], progress=progress)
    return BaselineResult(decode_latents(pipe, result.latents[:1])[0], "multidiffusion", prompts, negative)


#: ``name → function(pipe, layout, seed, config, progress=...)`` for the benchmark and ``generate``.
BASELINES = {"backward-guidance": backward_guidance, "multidiffusion": multidiffusion}

__all__ = ["BACKWARD_GUIDANCE", "BOOTSTRAP_FRACTION", "BaselineResult", "backward_guidance", "FuseRegions",
           "Bootstrap", "region_masks", "flat_colour_latents", "multidiffusion", "BASELINES"]
