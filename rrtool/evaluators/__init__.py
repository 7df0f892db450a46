"""Evaluators shared by Release (its running scores) and Audit (the before/after table).

Each evaluator returns an :class:`~rrtool.evaluators.base.Evaluation`: metrics, the definition
of every number in words, which scorer produced them, and the answers behind them. Model-side
work goes through the generation interface or a plain forward pass; nothing here touches
MLflow.
"""
