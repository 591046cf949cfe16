"""Model-card templates, shipped as package data and rendered by `hf_ext.hub`."""
