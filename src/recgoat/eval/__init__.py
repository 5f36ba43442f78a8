"""Exact full-ranking evaluation and top-K metrics."""
from recgoat.eval.evaluator import DeviceCSR, FullRankingEvaluator, MetricSums, users_with_items
from recgoat.eval.metrics import METRICS, ranking_metrics
from recgoat.eval.ranking import merge_topk, topk_stable

__all__ = ["METRICS", "DeviceCSR", "FullRankingEvaluator", "MetricSums", "merge_topk", "ranking_metrics",
           "topk_stable", "users_with_items"]
