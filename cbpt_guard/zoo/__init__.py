"""The model zoo: seeded image-caption data, the attacks that poison it, and the models trained on it.

``data`` renders a procedural shape/glyph/texture data set (and wraps scikit-learn's bundled
handwritten digits) as float tensors with composed captions; ``attacks`` holds the seven
trigger functions, their registry, and ``poison``, which turns a clean data set into the
poisoned one a backdoored CLIP is fine-tuned on; ``train`` fine-tunes and measures the models,
``build`` lays out a zoo of clean twins and backdoored variants (``configs`` names their
architectures), ``imagefolder`` writes its images as class folders, and ``report`` writes the
zoo's measured numbers.
"""
