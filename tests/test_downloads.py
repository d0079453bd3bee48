"""lmd_utils.downloads: no large download onto a CPU without LMD_ALLOW_DOWNLOAD=1, enforced where weights load."""

from __future__ import annotations

import pytest

from lmd_utils import downloads, models
from lmd_utils.downloads import (ENV_ALLOW_DOWNLOAD, DownloadNotAllowed, check_download, is_hub_id,
                                 weights_status)

HUB_ID = "someone/a-checkpoint-not-in-the-cache"


@pytest.fixture
def online(monkeypatch):
    """The hub not switched off and no opt-in; nothing here contacts it (the loaders are replaced where called)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv(ENV_ALLOW_DOWNLOAD, raising=False)
    return monkeypatch


def test_hub_ids_and_folders(tmp_path):
    assert is_hub_id("stable-diffusion-v1-5/stable-diffusion-v1-5") and is_hub_id("facebook/sam-vit-base")
    assert not is_hub_id(str(tmp_path))  # an existing folder
    assert not is_hub_id("/abs/path/model") and not is_hub_id("a/b/c") and not is_hub_id("./model")


def test_weights_status_says_where_weights_come_from(online, tmp_path):
    assert weights_status(str(tmp_path), "cpu") == (True, f"{tmp_path} (a local folder)")
    ok, why = weights_status(HUB_ID, "cpu")
    assert not ok and f"{ENV_ALLOW_DOWNLOAD}=1" in why and "about 4 GB" in why
    ok, why = weights_status("facebook/sam-vit-base", None, kind="sam")  # no device: the CPU
    assert not ok and "375 MB" in why
    assert weights_status(HUB_ID, "cuda")[0] and weights_status(HUB_ID, "mps")[0]  # an accelerator downloads
    online.setenv(ENV_ALLOW_DOWNLOAD, "1")
    ok, why = weights_status(HUB_ID, "cpu")
    assert ok and "LMD_ALLOW_DOWNLOAD=1" in why
    online.setenv("HF_HUB_OFFLINE", "1")  # offline beats the opt-in: nothing could be downloaded
    ok, why = weights_status(HUB_ID, "cuda")
    assert not ok and "HF_HUB_OFFLINE=1" in why
    online.setattr(downloads, "in_local_cache", lambda repo, files: True)  # weights already on disk: always fine
    assert weights_status(HUB_ID, "cpu") == (True, f"{HUB_ID} (in the local Hugging Face cache)")
    with pytest.raises(ValueError, match="kind"):
        weights_status(HUB_ID, "cpu", kind="vae")


def test_check_download_raises_an_os_error_that_names_the_variable(online):
    with pytest.raises(DownloadNotAllowed, match=ENV_ALLOW_DOWNLOAD) as raised:
        check_download(HUB_ID, "cpu")
    assert isinstance(raised.value, OSError)
    check_download(HUB_ID, "cuda")  # no error


def test_load_pipeline_refuses_a_hub_download_onto_the_cpu(online):
    def must_not_be_called(*args, **kwargs):
        raise AssertionError("from_pretrained was called: the download would have started")

    online.setattr(models.StableDiffusionPipeline, "from_pretrained", must_not_be_called)
    with pytest.raises(DownloadNotAllowed, match="LMD_ALLOW_DOWNLOAD=1"):
        models.load_pipeline(HUB_ID, device="cpu")
    # with the opt-in the loader is reached (a stand-in pipeline: nothing is downloaded in tests)
    online.setenv(ENV_ALLOW_DOWNLOAD, "1")
    calls = []
    tiny = models.build_tiny_pipeline(seed=0, sample_size=8)
    online.setattr(models.StableDiffusionPipeline, "from_pretrained",
                   lambda name, **kwargs: calls.append(name) or tiny)
    assert models.load_pipeline(HUB_ID, device="cpu") is tiny and calls == [HUB_ID]


def test_sam_from_the_hub_is_refused_on_the_cpu(online):
    from transformers import SamModel

    from lmd_utils.sam import DEFAULT_SAM_MODEL_ID, TransformersSam

    online.setattr(SamModel, "from_pretrained", classmethod(lambda cls, *a, **k: pytest.fail("download started")))
    with pytest.raises(DownloadNotAllowed, match="375 MB"):
        TransformersSam.from_pretrained(DEFAULT_SAM_MODEL_ID)
    with pytest.raises(DownloadNotAllowed):
        TransformersSam.from_pretrained(DEFAULT_SAM_MODEL_ID, device="cpu")


def test_the_cli_reports_the_refused_download_as_one_line(online, tmp_path, capsys):
    from lmd_utils.__main__ import main

    online.setenv("LMD_DEVICE", "cpu")
    rc = main(["generate", "a cat", "--model", HUB_ID, "--source", "planner", "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert rc == 1 and "error:" in err and "LMD_ALLOW_DOWNLOAD=1" in err
