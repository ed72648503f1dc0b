"""The model zoo: seeded image-caption data, the attacks that poison it, and the models trained on it.

Research code, kept apart from the product: ``cbpt_guard`` never imports this
package; it uses ``cbpt_guard`` (the classifier, the progress lines) to train and
measure the models the detector and purification are benchmarked on. Its
dependencies come with the ``zoo`` extra (``pip install 'cbpt-guard[zoo]'``), and
``cli`` is the ``cbpt-guard zoo`` command, registered through an entry point.

``data`` renders a procedural shape/glyph/texture data set (and wraps scikit-learn's bundled
handwritten digits) as float tensors with composed captions; ``attacks`` holds the seven
trigger functions, their registry, and ``poison``, which turns a clean data set into the
poisoned one a backdoored CLIP is fine-tuned on; ``train`` fine-tunes and measures the models,
``build`` lays out a zoo of clean twins and backdoored variants (``configs`` names their
architectures), ``imagefolder`` writes its images as class folders, and ``report`` writes the
zoo's measured numbers.
"""
