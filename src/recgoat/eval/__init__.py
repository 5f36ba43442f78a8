"""Exact full-ranking evaluation and top-K metrics."""
from recgoat.eval.evaluator import FullRankingEvaluator, MetricSums, top_k, users_with_items
from recgoat.eval.metrics import METRICS, ranking_metrics
from recgoat.utils.ranking import merge_topk, topk_stable

__all__ = ["METRICS", "FullRankingEvaluator", "MetricSums", "merge_topk", "ranking_metrics",
           "top_k", "topk_stable", "users_with_items"]
