"""Stage 1, PU selection: which unlabeled images belong to the teacher's task.

Xu et al., "Positive-Unlabeled Compression on the Cloud", NeurIPS 2019, Sec. 2.2-2.3 (Eq. 3-6),
trained with the non-negative PU risk of Kiryo et al. 2017. Modules: :mod:`~pucli.pu.nnpu` (the
risk), :mod:`~pucli.pu.options`, :mod:`~pucli.pu.network` (extractor, SE head, ensemble),
:mod:`~pucli.pu.taps`, :mod:`~pucli.pu.descriptors` (frozen descriptors and their cache),
:mod:`~pucli.pu.training`, :mod:`~pucli.pu.neighbors` (the pool's k-NN graph),
:mod:`~pucli.pu.propagation` (label propagation and graph smoothing over it), :mod:`~pucli.pu.ranking`
(which ranking and rule a run uses), :mod:`~pucli.pu.mixture_proportion` (best-bin estimation of a
mixture proportion), :mod:`~pucli.pu.class_prior` (the class prior of a pool: ``estimate_prior``),
:mod:`~pucli.pu.trust`, :mod:`~pucli.pu.degenerate`, :mod:`~pucli.pu.selection` (the whole stage:
``run_selection``, the selector file).
"""
