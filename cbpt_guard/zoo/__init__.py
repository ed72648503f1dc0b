"""The model zoo's raw material: seeded image-caption data and the attacks that poison it.

``data`` renders a procedural shape/glyph/texture data set (and wraps scikit-learn's bundled
handwritten digits) as float tensors with composed captions; ``attacks`` holds the seven
trigger functions, their registry, and ``poison``, which turns a clean data set into the
poisoned one a backdoored CLIP is fine-tuned on. Training the zoo's models lives elsewhere.
"""
