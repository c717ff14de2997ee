"""Shared fixtures: tiny backbones built in code, offline settings."""

from __future__ import annotations

import os
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "LIGHTNING_PROMPTS_CACHE" not in os.environ:  # the image-verification record: never the user's home
    import atexit
    import functools
    import shutil
    import tempfile

    os.environ["LIGHTNING_PROMPTS_CACHE"] = tempfile.mkdtemp(prefix="lightning_prompts_cache_")
    # removed by the process that made it (workers and subprocesses inherit the variable and leave it alone)
    atexit.register(functools.partial(shutil.rmtree, os.environ["LIGHTNING_PROMPTS_CACHE"], ignore_errors=True))

import pytest  # noqa: E402
import torch  # noqa: E402

warnings.filterwarnings("ignore", message=".*treespec.*")

# under pytest-xdist every worker takes one core of its own (two workers with two threads each thrash)
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // WORKERS)))


def pytest_collection_modifyitems(config, items):
    """``-m gpu`` on a machine without CUDA skips those tests with a reason instead of failing them."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (benchmarks/device_check.sh runs these on a GPU machine)")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_clip():
    from lightning_prompts.backbones import OpenCLIP

    return OpenCLIP("tiny", pretrained=None)


@pytest.fixture(scope="session")
def tiny_vit():
    from lightning_prompts.backbones import TimmViT

    return TimmViT("tiny")


@pytest.fixture
def trainer_kwargs(tmp_path):
    """Quiet CPU trainer settings for tests."""
    return {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": str(tmp_path),
    }
