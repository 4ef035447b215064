"""Moving Digits: a miniature reproduction of AnimateDiff on CPU.

Real handwritten digits (the UCI digits that scikit-learn ships, split by image into training and
held-out digits) move in straight lines on a plain canvas; a tiny text-to-image base is trained on
still frames, a motion module on the clips with the base frozen, a LoRA of the base on a style the
motion module never saw; then conditions are generated on held-out seeds and scored. Every model
goes through the project's own jobs (Ray Data preprocess, Ray Train + DeepSpeed, MLflow, the
evaluation job); only the VAE and the digit classifier are trained here directly.

- ``data``: digits, rendering, the clips and stills written as videos with a WebVid-style CSV;
- ``models``: the tiny base (VAE, frozen CLIP text encoder, UNet) and the digit classifier;
- ``run``: the chain, the conditions and the report (``python -m jobs.reproduce``).
"""
