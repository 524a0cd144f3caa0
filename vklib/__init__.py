"""vklib: the tested PyTorch kernels behind the vklib course on ten computer-vision research methods.

Shared core: :mod:`vklib.data` (dataset registry), :mod:`vklib.models`, :mod:`vklib.train`, :mod:`vklib.viz`,
:mod:`vklib.results` (recording a notebook run), :mod:`vklib.utils` and :mod:`vklib.course` (the catalogue and
CLI). Each method has one module of its own (e.g. :mod:`vklib.condensation`); two tasks are kept apart from their
methods: the pointing game notebook 07 scores saliency methods with (:mod:`vklib.pointing`, as TorchRay keeps its
benchmark apart) and the generated captioning scenes of notebook 09 (:mod:`vklib.scenes`); notebook 04's face data
(its training pairs, DVE's warps, and the readers of CelebA, MAFL and AFLW-MTFL) is in :mod:`vklib.faces`.
"""
__version__ = "0.1.0"
