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

* **BoxDiff** (Xie et al. 2023; the authors' re-implementation ``generation/boxdiff.py`` + ``utils/boxdiff.py``):
  ONE pass of the overall prompt with BoxDiff's own constraints (:func:`~lmd_utils.energy.boxdiff_energy`: inner
  box, outer box, corners) on the ×100-renormalised, smoothed token maps averaged over the 16×16 layers, one
  gradient step ``z ← z − 20·√(1 − t/2(T−1))·∇E`` on each of the first 25 of 50 steps (:class:`BoxDiffGuidance`).

* **GLIGEN** (Li et al. 2023; ``generation/gligen.py``): :func:`~lmd_utils.gligen.gligen_baseline`, one pass with
  GLIGEN's grounding tokens on a GLIGEN model; LMD+ is LMD with that grounding in both passes
  (:meth:`LMDConfig.plus <lmd_utils.config.LMDConfig.plus>`).

All return :class:`BaselineResult`; :func:`layout_image` runs any layout method by name.

Where these differ from the authors' runs: MultiDiffusion's negative prompt is the layout's plus LMD's overall
negative prompt (theirs adds "headshot, close-up, partial, large, huge, gigantic"); its region masks are the boxes
rounded on the latent grid (:meth:`~lmd_utils.layout.Box.mask`; theirs are drawn in pixels, then resized by
nearest neighbour); its flat bootstrap colours come from a generator seeded with the image seed (theirs from the
global random state).  Backward guidance uses their settings literally (:meth:`GuidanceConfig.authors`).  Neither
is yet checked against their code stage by stage, as LMD is (``make test-reference``).  BoxDiff: their settings
(:data:`BOXDIFF`); its energy equals theirs on the same maps (``tests/test_baselines.py``, against numbers printed
by their ``add_ca_loss_per_attn_map_to_loss_boxdiff``); the phrase tokens follow ``GuidanceConfig.skip_articles``
(theirs include the articles); a box too small for a top-k cell keeps one (``k ≥ 1``; theirs gives NaN).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .attention import AttentionStore, capture_cross_attention, default_layers, resolve_layers, run_unet_until_captured
from .composition import composed_pass_guidance, overall_prompt_for, overall_token_targets
from .config import GuidanceConfig, LMDConfig
from .energy import (BOXDIFF_CORNER_WIDTH, BOXDIFF_SMOOTHING, BOXDIFF_TEMPERATURE, BOXDIFF_TOP_FRACTION,
                     boxdiff_energy, boxdiff_token_maps, corner_bands, gaussian_smooth)
from .grammar import join_phrases
from .layout import Layout
from .models import decode_latents, encode_prompts, initial_noise, is_pixel_space
from .pipeline import check_layout
from .gligen import check_gligen, gligen_baseline
from .sampling import ObjectTarget, denoise

#: The authors' backward-guidance settings, literal (``generation/backward_guidance.py``: ``overall_loss_scale=30,
#: overall_loss_threshold=0.2, overall_max_iter=5, overall_max_index_step=10`` of 50 steps, the head-summed loss).
BACKWARD_GUIDANCE = GuidanceConfig.authors(loss_scale=30.0, loss_threshold=0.2, iterations=(5,), guidance_steps=10,
                                           layers=())  # () = the model's guidance layers


@dataclass(frozen=True)
class MultiDiffusionConfig:
    """bootstrap_fraction: the steps whose regions are bootstrapped (the authors' ``--multidiffusion_bootstrapping
    20`` of 50).  background: the prompt of the whole-canvas element (``None``: the layout's background prompt, as
    the authors'; a model whose empty caption means "random objects", such as the toy world, may need another)."""

    bootstrap_fraction: float = 0.4
    background: str | None = None


#: The authors' MultiDiffusion run.
MULTIDIFFUSION = MultiDiffusionConfig()
#: The file next to a model's weights holding its calibrated baseline settings (the toy world ships one).
SHIPPED_SETTINGS_FILE = "baselines.json"


def shipped_settings(pipe) -> dict:
    """``{method: {field: value}}`` from the model folder's :data:`SHIPPED_SETTINGS_FILE` (``{}`` without one): the
    settings each baseline was calibrated to on that model, as ``lmd_config.json`` holds LMD's."""
    folder = Path(str(getattr(pipe, "name_or_path", "") or ""))
    path = folder / SHIPPED_SETTINGS_FILE
    if not (folder.is_dir() and path.is_file()):
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return {k: v for k, v in data.items() if not k.startswith("_")}  # "_command": how it was measured


def method_settings(pipe, method: str, authors, settings=None):
    """The settings a baseline runs with: ``settings`` when it is already a settings object; else ``authors`` (the
    authors' values) with the model's shipped calibration, then the overrides in ``settings`` (a dict)."""
    if settings is not None and not isinstance(settings, dict):
        return settings
    overrides = {**shipped_settings(pipe).get(method, {}), **(settings or {})}
    return replace(authors, **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})


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
                      settings: GuidanceConfig | dict | None = None, progress: bool = True,
                      attention_store=None) -> BaselineResult:
    """One guided pass of the overall prompt (see the module docstring).  ``settings``: a
    :class:`GuidanceConfig`, or overrides of :data:`BACKWARD_GUIDANCE` (default: the model's shipped calibration,
    :func:`shipped_settings`), stretched to ``config``'s steps, on the model's guidance layers.
    ``attention_store`` (an :class:`~lmd_utils.attention.AttentionStore`) records the pass's cross-attention."""
    config, layout, noise, negative = _setup(pipe, layout, seed, config)
    prompt, background_end = overall_prompt_for(layout, config.overall_prompt, pipe.tokenizer)
    if not layout.boxes:
        return _plain(pipe, layout.background or layout.prompt, negative, noise, config, "backward-guidance",
                      progress=progress)
    settings = method_settings(pipe, "backward-guidance", BACKWARD_GUIDANCE, settings)
    settings = settings.scaled_to(config.num_inference_steps)
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
                   settings: MultiDiffusionConfig | dict | None = None, progress: bool = True) -> BaselineResult:
    """Region-based MultiDiffusion on the layout (see the module docstring); ``settings`` as for
    :func:`backward_guidance`, over :data:`MULTIDIFFUSION`."""
    config, layout, noise, negative = _setup(pipe, layout, seed, config)
    if not layout.boxes:  # as generate does
        return _plain(pipe, layout.background or layout.prompt, negative, noise, config, "multidiffusion",
                      progress=progress)
    settings = method_settings(pipe, "multidiffusion", MULTIDIFFUSION, settings)
    background = layout.background if settings.background is None else settings.background
    prompts = [background] + [b.phrase for b in layout.boxes]  # the authors' bg_prompt, then each caption
    h, w = noise.shape[-2:]
    masks = region_masks(layout, h, w)
    height, width = config.resolution(pipe)
    generator = torch.Generator().manual_seed(seed)
    backgrounds = flat_colour_latents(pipe, len(prompts) - 1, height, width, generator)
    steps = round(settings.bootstrap_fraction * config.num_inference_steps)
    batch = noise.expand(len(prompts), *noise.shape[1:]).clone()
    result = denoise(pipe, batch, encode_prompts(pipe, prompts), encode_prompts(pipe, [negative]),
                     config.num_inference_steps, config.guidance_scale,
                     hooks=[Bootstrap(masks, backgrounds, noise.expand_as(backgrounds).clone(), steps),
                            FuseRegions(masks)], progress=progress)
    return BaselineResult(decode_latents(pipe, result.latents[:1])[0], "multidiffusion", prompts, negative)


# -- BoxDiff -----------------------------------------------------------------------------------------------
#: BoxDiff's layers on SD-shaped UNets: the 16×16 cross-attention of ``down_blocks.2`` and ``up_blocks.1`` (the
#: authors' ``overall_guidance_attn_keys`` in ``generation/boxdiff.py``).
BOXDIFF_LAYERS = ("down_blocks.2.attentions", "up_blocks.1.attentions")


@dataclass(frozen=True)
class BoxDiffConfig:
    """BoxDiff's settings (defaults: the authors' ``utils/boxdiff.py`` / ``generation/boxdiff.py`` on 50 steps).

    step_size: the gradient step (their ``latent_scale = 20``), times ``√(s0 + (s1 − s0)·t/(T−1))`` with
        ``scale_range = (s0, s1) = (1, 0.5)`` decaying over the run (BoxDiff's own rule).
    guidance_steps: one gradient step on each of the first steps (their ``max_index_step = 25`` of 50).
    top_fraction, corner_width, smoothing (kernel, σ), temperature: the constraints (:mod:`~lmd_utils.energy`).
    layers: the maps averaged (with their heads) for the energy; ``()``: :data:`BOXDIFF_LAYERS` when the UNet has
        them, else the model's guidance layers (maps resampled to the largest grid before averaging).
    """

    step_size: float = 20.0
    scale_range: tuple[float, float] = (1.0, 0.5)
    guidance_steps: int = 25
    top_fraction: float = BOXDIFF_TOP_FRACTION
    corner_width: int = BOXDIFF_CORNER_WIDTH
    smoothing: tuple[int, float] = BOXDIFF_SMOOTHING
    temperature: float = BOXDIFF_TEMPERATURE
    layers: tuple[str, ...] = ()

    def scaled_to(self, num_inference_steps: int, reference_steps: int = 50) -> "BoxDiffConfig":
        """The same guided fraction of a run of ``num_inference_steps``."""
        return replace(self, guidance_steps=round(self.guidance_steps * num_inference_steps / reference_steps))


#: The authors' BoxDiff run, literal.
BOXDIFF = BoxDiffConfig()


def boxdiff_layers(unet, config: BoxDiffConfig) -> tuple[str, ...] | str:
    if config.layers:
        return config.layers
    try:
        resolve_layers(unet, BOXDIFF_LAYERS)
        return BOXDIFF_LAYERS
    except ValueError:
        return default_layers(unet)[0]


class BoxDiffGuidance:
    """``before_step`` hook: one step down BoxDiff's energy on each of the first ``config.guidance_steps`` steps.

    The energy (:meth:`energy`) of the one image: over every object and every one of its tokens, the sum of
    :func:`~lmd_utils.energy.boxdiff_energy` on that token's smoothed map (of :func:`boxdiff_token_maps` of the
    maps averaged over layers and heads).  ``log`` keeps ``(step, energy before the update)``.
    """

    def __init__(self, objects, config: BoxDiffConfig = BOXDIFF, layers: tuple[str, ...] | str = BOXDIFF_LAYERS,
                 box_rounding: str = "edges") -> None:
        self.objects: list[ObjectTarget] = list(objects)
        self.config, self.layers, self.box_rounding = config, layers, box_rounding
        self.log: list[tuple[int, float]] = []

    def energy(self, probs: torch.Tensor) -> torch.Tensor:
        """BoxDiff's energy from one image's attention ``(H, W, T)`` (layers and heads averaged)."""
        cfg = self.config
        maps = boxdiff_token_maps(probs, cfg.temperature)
        h, w = maps.shape[:2]
        total = maps.new_zeros(())
        for obj in self.objects:
            mask = torch.stack([b.mask(h, w, rounding=self.box_rounding) for b in obj.boxes]).amax(0).to(maps.device)
            spans = [b.pixel_slices(h, w, self.box_rounding) for b in obj.boxes]
            cx = corner_bands([(c.start, c.stop) for _, c in spans], w, cfg.corner_width).to(maps.device)
            cy = corner_bands([(r.start, r.stop) for r, _ in spans], h, cfg.corner_width).to(maps.device)
            for k in obj.token_indices:
                token = gaussian_smooth(maps[..., k - 1], *cfg.smoothing)
                total = total + boxdiff_energy(token, mask, cx, cy, cfg.top_fraction)
        return total

    @torch.enable_grad()
    def before_step(self, state) -> torch.Tensor | None:
        cfg = self.config
        if state.step >= cfg.guidance_steps or not self.objects:
            return None
        z = state.latents.detach().clone().requires_grad_(True)
        store = AttentionStore(layers=self.layers, keep="all", keep_grad=True, stop_after_last_layer=True)
        store.cfg_batch = False
        store.set_step(state.step)
        with capture_cross_attention(state.pipe.unet, store=store):
            run_unet_until_captured(state.pipe.unet, state.scheduler.scale_model_input(z, state.timestep),
                                    state.timestep, state.cond_embeds, store)
        energy = torch.stack([self.energy(m.permute(1, 2, 0)) for m in store.aggregate(steps=(state.step,))]).sum()
        (grad,) = torch.autograd.grad(energy, z)
        s0, s1 = cfg.scale_range
        scale = (s0 + (s1 - s0) * state.step / max(state.num_steps - 1, 1)) ** 0.5
        self.log.append((state.step, float(energy.detach())))
        return (z - cfg.step_size * scale * grad.to(z.dtype)).detach()


def boxdiff(pipe, layout: Layout, seed: int = 0, config: LMDConfig | None = None,
            settings: BoxDiffConfig | dict | None = None, progress: bool = True, attention_store=None) -> BaselineResult:
    """BoxDiff: one pass of the overall prompt under :class:`BoxDiffGuidance` (see the module docstring);
    ``settings`` as for :func:`backward_guidance`, over :data:`BOXDIFF`, stretched to ``config``'s steps."""
    config, layout, noise, negative = _setup(pipe, layout, seed, config)
    prompt, background_end = overall_prompt_for(layout, config.overall_prompt, pipe.tokenizer)
    if not layout.boxes:
        return _plain(pipe, layout.background or layout.prompt, negative, noise, config, "boxdiff", progress=progress)
    settings = method_settings(pipe, "boxdiff", BOXDIFF, settings).scaled_to(config.num_inference_steps)
    objects = [target for _, target, _ in overall_token_targets(pipe.tokenizer, layout, prompt, background_end,
                                                                config.overall_guidance.skip_articles)]
    hook = BoxDiffGuidance(objects, settings, boxdiff_layers(pipe.unet, settings), config.box_rounding)
    return _plain(pipe, prompt, negative, noise, config, "boxdiff", hooks=[hook], progress=progress,
                  attention_store=attention_store)


#: ``name → function(pipe, layout, seed, config, progress=...)`` for the benchmark and ``generate``.
BASELINES = {"multidiffusion": multidiffusion, "backward-guidance": backward_guidance, "boxdiff": boxdiff,
             "gligen": gligen_baseline}
#: The methods that need a GLIGEN model (:func:`~lmd_utils.gligen.check_gligen`).
GLIGEN_METHODS = ("gligen", "lmd+")


def check_methods(pipe, methods) -> None:
    """A ``ValueError`` (one line for the command line) when ``pipe`` cannot run one of ``methods``: GLIGEN and LMD+
    need GLIGEN's layers.  Call it before any image is made."""
    for method in methods:
        if method in GLIGEN_METHODS:
            check_gligen(pipe, method)


def layout_image(pipe, method: str, layout: Layout, seed: int, config: LMDConfig, sam=None,
                 progress: bool = True) -> torch.Tensor:
    """The image ``(3, H, W)`` of a layout method: ``"lmd"`` (:func:`~lmd_utils.pipeline.generate`, masks refined by
    ``sam`` when given), ``"lmd+"`` (the same with :meth:`LMDConfig.plus`: GLIGEN in both passes) or a baseline of
    :data:`BASELINES`, from the same layout and seed."""
    from .pipeline import generate

    if method in ("lmd", "lmd+"):
        return generate(pipe, layout, seed, config.plus() if method == "lmd+" else config, sam=sam,
                        progress=progress).image
    if method not in BASELINES:
        raise ValueError(f"unknown layout method {method!r}; choose from lmd, lmd+, {', '.join(BASELINES)}")
    return BASELINES[method](pipe, layout, seed, config, progress=progress).image

__all__ = ["BACKWARD_GUIDANCE", "MultiDiffusionConfig", "MULTIDIFFUSION", "SHIPPED_SETTINGS_FILE", "shipped_settings",
           "method_settings", "BaselineResult", "backward_guidance", "FuseRegions",
           "Bootstrap", "region_masks", "flat_colour_latents", "multidiffusion", "BOXDIFF_LAYERS", "BoxDiffConfig",
           "BOXDIFF", "boxdiff_layers", "BoxDiffGuidance", "boxdiff", "BASELINES", "GLIGEN_METHODS", "check_methods",
           "layout_image"]
