"""Optimizer and scheduler factories survive the checkpoint round trip as plain dicts."""

from __future__ import annotations

import functools

import torch
from jsonargparse import ArgumentParser
from lightning.pytorch.cli import OptimizerCallable

from lightning_prompts.utils.factories import as_factory, describe_factory


def test_describe_and_rebuild_a_partial():
    described = describe_factory(functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9))
    assert described == {"class_path": "torch.optim.sgd.SGD", "init_args": {"lr": 0.1, "momentum": 0.9}}
    optimizer = as_factory(described)([torch.nn.Parameter(torch.zeros(1))])
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == 0.9


def test_describe_the_callable_jsonargparse_builds():
    parser = ArgumentParser()
    parser.add_argument("--optimizer", type=OptimizerCallable)
    config = parser.parse_args(["--optimizer", "torch.optim.AdamW", "--optimizer.lr", "0.5"])
    factory = parser.instantiate_classes(config).optimizer
    described = describe_factory(factory)
    assert described["class_path"] == "torch.optim.adamw.AdamW" and described["init_args"]["lr"] == 0.5
    assert describe_factory(lambda params: None) is None
