"""Stage 1, PU selection: which unlabeled images belong to the teacher's task.

Xu et al., "Positive-Unlabeled Compression on the Cloud", NeurIPS 2019, Sec. 2.2-2.3 (Eq. 3-6),
trained with the non-negative PU risk of Kiryo et al. 2017. Modules: :mod:`~pucli.pu.nnpu` (the
risk), :mod:`~pucli.pu.options`, :mod:`~pucli.pu.network` (extractor, SE head, ensemble),
:mod:`~pucli.pu.descriptors` (frozen descriptors and their cache), :mod:`~pucli.pu.training`,
:mod:`~pucli.pu.graph` (graph smoothing), :mod:`~pucli.pu.prior` (class-prior estimation),
:mod:`~pucli.pu.selection` (the whole stage: ``run_selection``, ``estimate_prior``, the selector file).
"""
