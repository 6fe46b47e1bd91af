"""Stages 2-3, knowledge distillation: the expanded set with the teacher's soft targets
(:mod:`~pucli.kd.expand`), the KD, weighted-KD and robust-KD losses (:mod:`~pucli.kd.losses`, Xu et
al. 2019, Eq. 1, 7-10) and the training loop (:mod:`pucli.kd.distill`).
"""
