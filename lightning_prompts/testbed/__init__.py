"""The offline vision-language testbed: a stand-in CLIP from real unimodal models, and real data.

``python -m lightning_prompts.testbed align`` trains the stand-in's alignment map;
``python -m lightning_prompts.testbed prepare`` writes Fashion-MNIST in the Dassl layout. See
``docs/testbed.md``.
"""
