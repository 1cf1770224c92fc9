"""The server's latency budget over a run: its stage and GC histograms scraped from /metrics
before and after, and each stage's count, mean, p50 and p99 over what happened between."""

from __future__ import annotations

import httpx

BUDGET_SERIES = {
    "ratewire_delivery_stage_seconds": "stage",
    "ratewire_gc_pause_seconds": "generation",
}
Histograms = dict[str, tuple[list[tuple[float, float]], float]]


def scrape_histograms(metrics_url: str) -> Histograms:
    """The budget's histograms on a ratewire server: 'stage' or 'gc<N>' -> (cumulative
    buckets, sum). Empty when the target has no such series (the guide's server)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        answer = httpx.get(metrics_url, timeout=5)
    except httpx.HTTPError:
        return {}
    if answer.status_code != 200 or not answer.headers.get("content-type", "").startswith("text/"):
        return {}
    text = answer.text
    found: dict[str, tuple[list[tuple[float, float]], float]] = {}
    for family in text_string_to_metric_families(text):
        label = BUDGET_SERIES.get(family.name)
        if label is None:
            continue
        for sample in family.samples:
            key = sample.labels.get(label, "")
            if label == "generation":
                key = f"gc{key}"
            buckets, total = found.get(key, ([], 0.0))
            if sample.name.endswith("_bucket"):
                buckets.append((float(sample.labels["le"]), sample.value))
            elif sample.name.endswith("_sum"):
                total = sample.value
            found[key] = (buckets, total)
    return found


def _quantile(buckets: list[tuple[float, float]], fraction: float) -> float:
    """Linear interpolation inside the bucket that holds ``fraction`` of the count."""
    total = buckets[-1][1]
    wanted = fraction * total
    lower_bound = lower_count = 0.0
    for bound, count in buckets:
        if count >= wanted:
            if bound == float("inf"):
                return lower_bound
            share = (wanted - lower_count) / (count - lower_count) if count > lower_count else 0
            return lower_bound + share * (bound - lower_bound)
        lower_bound, lower_count = bound, count
    return lower_bound


def budget_between(before: Histograms, after: Histograms) -> dict[str, dict[str, float]]:
    """Each stage's (and GC generation's) count, mean, p50 and p99 over what happened
    between two scrapes."""
    budget = {}
    for key, (buckets, total) in after.items():
        earlier, earlier_sum = before.get(key, ([], 0.0))
        counts = dict(earlier)
        grown = [(bound, count - counts.get(bound, 0.0)) for bound, count in buckets]
        count = grown[-1][1] if grown else 0.0
        if count <= 0:
            continue
        budget[key] = {
            "count": count,
            "mean_ms": round(1000 * (total - earlier_sum) / count, 3),
            "p50_ms": round(1000 * _quantile(grown, 0.50), 3),
            "p99_ms": round(1000 * _quantile(grown, 0.99), 3),
        }
    return budget
