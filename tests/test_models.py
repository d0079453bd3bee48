"""models.py: tiny pipeline layout, latent/pixel-space helpers, prompt encoding, reproducible noise."""

import pytest
import torch

from lmd_utils import models
from lmd_utils.models import (TINY_VOCABULARY, build_tiny_pipeline, decode_latents, default_resolution, encode_prompts,
                              initial_noise, latent_shape, load_pipeline, pick_device, to_pil, vae_scale_factor)


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_pipeline(seed=0)


@pytest.fixture(scope="module")
def pixel_pipe():
    return build_tiny_pipeline(seed=0, pixel_space=True)


def test_pick_device_is_cpu_here():
    assert pick_device().type == ("cuda" if torch.cuda.is_available() else pick_device().type)
    assert isinstance(pick_device(), torch.device)


def test_tiny_pipeline_has_the_authors_layer_names(pipe):
    names = {n for n, _ in pipe.unet.named_modules()}
    for layer in ("mid_block.attentions.0", "up_blocks.1.attentions.0", "up_blocks.1.attentions.1",
                  "up_blocks.1.attentions.2", "down_blocks.2.attentions.1"):
        assert f"{layer}.transformer_blocks.0.attn2" in names
    assert len(pipe.unet.down_blocks) == len(pipe.unet.up_blocks) == 4
    assert sum(n.endswith("attn2") for n in names) == 16  # as in SD 1.5
    assert vae_scale_factor(pipe) == 8 and default_resolution(pipe) == (256, 256)
    assert latent_shape(pipe, 128, 64, batch=3) == (3, 4, 16, 8)
    with pytest.raises(ValueError):
        latent_shape(pipe, 100, 64)


def test_tiny_weights_depend_only_on_seed_and_leave_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    a = build_tiny_pipeline(seed=0)
    assert torch.equal(torch.rand(1), expected)  # global RNG untouched
    b, c = build_tiny_pipeline(seed=0), build_tiny_pipeline(seed=1)
    wa, wb, wc = (p.unet.conv_in.weight for p in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_every_tiny_vocabulary_word_is_one_token(pipe):
    tok = pipe.tokenizer
    assert [w for w in TINY_VOCABULARY if len(tok(w).input_ids) != 3] == []
    assert tok.model_max_length == 77


def test_encode_prompts_matches_the_pipeline_encoder(pipe):
    emb = encode_prompts(pipe, ["a cat", ""])
    assert emb.shape == (2, pipe.tokenizer.model_max_length, pipe.text_encoder.config.hidden_size)
    ref, _ = pipe.encode_prompt(["a cat", ""], torch.device("cpu"), 1, False)
    assert torch.equal(emb, ref)
    assert not torch.allclose(emb[0], emb[1])
    assert torch.equal(encode_prompts(pipe, "a cat"), emb[:1])
    with pytest.raises(ValueError):
        encode_prompts(pipe, [])


def test_decode_latents_range_and_shape(pipe):
    z = initial_noise(pipe, 2, 64, 64, seed=0)
    img = decode_latents(pipe, z)
    assert img.shape == (2, 3, 64, 64) and img.dtype == torch.float32
    assert 0 <= img.min() and img.max() <= 1
    pil = to_pil(img)
    assert len(pil) == 2 and pil[0].size == (64, 64)


def test_pixel_space_helpers(pixel_pipe, tmp_path):
    assert vae_scale_factor(pixel_pipe) == 1
    assert latent_shape(pixel_pipe, 32, 32, 2) == (2, 3, 32, 32)
    assert default_resolution(pixel_pipe) == (32, 32)
    x = torch.tensor([[-1.0, 0.0, 1.0, 3.0]]).view(1, 1, 1, 4).expand(1, 3, 1, 4)
    assert torch.equal(decode_latents(pixel_pipe, x)[0, 0, 0], torch.tensor([0.0, 0.5, 1.0, 1.0]))
    # a saved pixel-space pipeline (vae=None) loads back through load_pipeline's folder path
    pixel_pipe.save_pretrained(tmp_path / "px")
    loaded = load_pipeline(str(tmp_path / "px"), device="cpu")
    assert loaded.vae is None and vae_scale_factor(loaded) == 1
    assert torch.equal(loaded.unet.conv_in.weight, pixel_pipe.unet.conv_in.weight)


def test_load_pipeline_tiny_and_missing_toyworld(monkeypatch, tmp_path):
    pipe = load_pipeline("tiny", device="cpu")
    assert pipe.unet.dtype == torch.float32 and pipe.unet.device.type == "cpu"
    monkeypatch.setattr(models, "TOYWORLD_MODEL_DIR", tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="toy-world model"):
        load_pipeline("toyworld", device="cpu")
    with pytest.raises(FileNotFoundError):
        load_pipeline("./no/such/folder", device="cpu")
    assert models.default_dtype("cuda") == torch.float16 and models.default_dtype("cpu") == torch.float32


def test_initial_noise_is_reproducible_and_per_element(pipe):
    a = initial_noise(pipe, 3, 64, 64, seed=7)
    assert a.shape == (3, 4, 8, 8)
    assert torch.equal(a, initial_noise(pipe, 3, 64, 64, seed=7))
    assert not torch.equal(a, initial_noise(pipe, 3, 64, 64, seed=8))
    per = initial_noise(pipe, 3, 64, 64, seed=[5, 6, 7])
    # element i depends only on its own seed, not on the batch it is in
    assert torch.equal(per[2:], initial_noise(pipe, 1, 64, 64, seed=[7]))
    assert torch.equal(per[2:], initial_noise(pipe, 1, 64, 64, seed=7))
    with pytest.raises(ValueError):
        initial_noise(pipe, 2, 64, 64, seed=[1])
    assert abs(initial_noise(pipe, 8, 256, 256, seed=0).std().item() - 1) < 0.02


def test_scheduler_copy_is_fresh_ddim_with_the_pipe_config(pipe):
    s = models.scheduler_copy(pipe)
    assert type(s).__name__ == "DDIMScheduler" and s is not pipe.scheduler
    assert s.config.beta_schedule == "scaled_linear" and s.config.prediction_type == "epsilon"
    from diffusers import EulerDiscreteScheduler
    e = models.scheduler_copy(pipe, EulerDiscreteScheduler.from_config(pipe.scheduler.config))
    assert isinstance(e, EulerDiscreteScheduler)


def test_device_order_is_cuda_then_mps_then_cpu(monkeypatch, no_accelerator):
    assert pick_device() == torch.device("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert pick_device() == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device() == torch.device("cuda")
    monkeypatch.setenv(models.ENV_DEVICE, "cpu")  # CI forces the CPU even where a GPU exists
    assert pick_device() == torch.device("cpu")
    assert pick_device("mps") == torch.device("mps")  # an explicit argument wins over the environment


def test_unavailable_or_unknown_device_is_an_error(no_accelerator):
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        pick_device("cuda:0")
    with pytest.raises(RuntimeError, match="MPS is not available"):
        pick_device("mps")
    with pytest.raises(ValueError, match="unknown device"):
        pick_device("gpu please")
    assert models.default_dtype(torch.device("cuda")) == torch.float16
    assert models.default_dtype(torch.device("cpu")) == torch.float32


def test_model_folders_that_hold_no_pipeline_are_typed_errors(tmp_path):
    from lmd_utils.downloads import ModelLoadError
    from lmd_utils.models import load_pipeline

    (tmp_path / "empty").mkdir()
    (tmp_path / "index_only").mkdir()
    (tmp_path / "index_only" / "model_index.json").write_text("{}")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model_index.json").write_text("[1")
    (tmp_path / "file").write_text("x")
    for name, match in [("empty", "no model_index.json"), ("index_only", "cannot load a Stable Diffusion"),
                        ("broken", "JSONDecodeError"), ("file", "is a file")]:
        with pytest.raises(ModelLoadError, match=match):
            load_pipeline(str(tmp_path / name), device="cpu")
    with pytest.raises(FileNotFoundError, match="does not look like a hub id"):
        load_pipeline("not a hub id", device="cpu")


def test_devices_this_machine_lacks_are_typed_errors():
    from lmd_utils.models import DeviceNotAvailable

    with pytest.raises(ValueError, match="unknown device"):
        pick_device("bogus")
    with pytest.raises(ValueError, match="unsupported device"):
        pick_device("meta")
    with pytest.raises(DeviceNotAvailable):
        pick_device(f"cuda:{torch.cuda.device_count() + 3}")
