"""Integrations with other libraries. Each submodule imports its library only when used:
:mod:`rope_triton.integrations.transformers` (Hugging Face transformers).
"""
