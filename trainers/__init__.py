"""Accelerate-launchable training scripts: `accelerate launch -m hf_ext.trainers.<name>`."""
