"""Data: image files and tar shards, decoding, sources (class folders, the unlabeled pool), batching,
and the file formats pucli writes between stages (the selection index, the expanded set).

Modules: :mod:`~pucli.data.files` (extensions, scans, path lists; a leaf), :mod:`~pucli.data.shards`,
:mod:`~pucli.data.decode`, :mod:`~pucli.data.sources`, :mod:`~pucli.data.loading`,
:mod:`~pucli.data.augment`, :mod:`~pucli.data.index`, :mod:`~pucli.data.manifest`.
"""
