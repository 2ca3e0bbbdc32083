"""Torch-free inference side: neighbor lists and structure checks for MD hosts.

Depends only on numpy, vesin and onnxruntime; never imports torch, e3nn,
``allegro_deploy.models`` or ``allegro_deploy.exporters``.
"""
