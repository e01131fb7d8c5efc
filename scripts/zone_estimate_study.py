#!/usr/bin/python3
"""Where the estimation zone's error comes from, on a learned-attention dump.

A numpy model of the wave index's estimate (not kvtier's code): the cold keys of each KV head
clustered by spherical k-means in 8K-token segments (~16 tokens a cluster, 10 iterations), the
clusters ranked by estimated mass, the best up to 2% of the cold tokens attended exactly with the
hot set (64 sink + 1024 window tokens), the next `zone` share of the clusters estimated. It
prints the mean relative L2 output error (32 queries x every query head) of these estimates:

  centroid   n e^{l_c}, mean value
  spread     n e^{l_c + 1/4 scale^2 |q|^2 s_c} (kvtier's kSpreadWeight 1/2), mean value
  exact_w    the cluster's exact weight sum e^{l_i}, mean value
  exact_v    spread weights, the cluster's exact attention-weighted mean value
  exact      both exact (attention over the zone's tokens)
  linear     spread weights, mean value + scale (s_c / s) C q: C = the KV head's pooled
             cross-covariance of value and key deviations from their cluster means,
             s = the pooled mean key variance (a cluster's keys and values jointly Gaussian,
             their covariance the pooled one scaled by s_c / s, tilted by e^{scale q.k})

Usage: scripts/zone_estimate_study.py DUMP.npz [ZONE_SHARE, default 0.5]
Needs Debian's python3-numpy (/usr/bin/python3); about a minute a dump.
"""
import sys

import numpy as np

SINK, WINDOW, SEGMENT, PER_CLUSTER, ITERATIONS = 64, 1024, 8192, 16, 10
SPREAD_WEIGHT = 0.5


def kmeans(keys, k, rng):
    unit = keys / np.linalg.norm(keys, axis=1, keepdims=True)
    centers = unit[rng.choice(len(keys), k, replace=False)]
    for _ in range(ITERATIONS):
        label = np.argmax(unit @ centers.T, axis=1)
        for j in range(k):
            members = label == j
            if members.any():
                centers[j] = unit[members].mean(0)
                centers[j] /= np.linalg.norm(centers[j])
    return np.argmax(unit @ centers.T, axis=1)


def per_cluster_sum(label, values, clusters):
    out = np.zeros((clusters,) + values.shape[1:])
    np.add.at(out, label, values)
    return out


def main():
    path = sys.argv[1]
    zone_share = float(sys.argv[2]) if len(sys.argv) > 2 else 0.5
    data = np.load(path)
    K, V, Q = (data[x].astype(np.float64) for x in ("k", "v", "q"))
    q_pos = data["q_pos"]
    heads, tokens, dim = K.shape
    group = Q.shape[0] // heads
    scale = 1 / np.sqrt(dim)
    rng = np.random.default_rng(0)
    queries = np.linspace(0, Q.shape[1] - 1, 32).astype(int)
    cold_end = int(q_pos[queries[0]]) + 1 - WINDOW  # cold for every evaluated query
    cold = np.arange(SINK, cold_end)
    names = ("centroid", "spread", "exact_w", "exact_v", "exact", "linear")
    errors = {name: [] for name in names}
    for h in range(heads):
        label = np.full(tokens, -1)
        clusters = 0
        for s0 in range(SINK, cold_end, SEGMENT):
            s1 = min(s0 + SEGMENT, cold_end)
            k = max(1, (s1 - s0) // PER_CLUSTER)
            label[s0:s1] = kmeans(K[h, s0:s1], k, rng) + clusters
            clusters += k
        lab = label[cold]
        count = np.bincount(lab, minlength=clusters).astype(float)
        key_mean = per_cluster_sum(lab, K[h, cold], clusters) / np.maximum(count, 1)[:, None]
        value_mean = per_cluster_sum(lab, V[h, cold], clusters) / np.maximum(count, 1)[:, None]
        dk = K[h, cold] - key_mean[lab]
        dv = V[h, cold] - value_mean[lab]
        spread = per_cluster_sum(lab, (dk**2).mean(1), clusters) / np.maximum(count, 1)
        cross = dv.T @ dk / len(cold)  # C: value deviations x key deviations
        pooled_spread = (dk**2).mean()
        for qi in queries:
            n = int(q_pos[qi]) + 1
            for g in range(group):
                q = Q[h * group + g, qi]
                logit = K[h, :n] @ q * scale
                top = logit.max()
                e = np.exp(logit - top)
                exact = (e[:, None] * V[h, :n]).sum(0) / e.sum()
                weight_sum = per_cluster_sum(lab, e[cold], clusters)
                weighted_value = per_cluster_sum(lab, e[cold][:, None] * V[h, cold], clusters)
                centroid_logit = key_mean @ q * scale - top
                order = np.argsort(-count * np.exp(centroid_logit))
                taken, retrieved = 0, 0
                while retrieved < len(order) and taken < 0.02 * len(cold):
                    taken += count[order[retrieved]]
                    retrieved += 1
                zone = order[retrieved : retrieved + int(zone_share * clusters)]
                attended = np.zeros(n, bool)
                attended[:SINK] = True
                attended[cold_end:n] = True
                attended[cold[np.isin(lab, order[:retrieved])]] = True
                numerator = (e[attended][:, None] * V[h, :n][attended]).sum(0)
                denominator = e[attended].sum()
                plain = count[zone] * np.exp(centroid_logit[zone])
                spread_w = plain * np.exp(0.5 * SPREAD_WEIGHT * scale**2 * (q @ q) * spread[zone])
                tilted = weighted_value[zone] / np.maximum(weight_sum[zone], 1e-300)[:, None]
                shift = scale * (spread[zone] / pooled_spread)[:, None] * (cross @ q)[None, :]
                estimates = {
                    "centroid": (plain, value_mean[zone]),
                    "spread": (spread_w, value_mean[zone]),
                    "exact_w": (weight_sum[zone], value_mean[zone]),
                    "exact_v": (spread_w, tilted),
                    "exact": (weight_sum[zone], tilted),
                    "linear": (spread_w, value_mean[zone] + shift),
                }
                for name, (w, value) in estimates.items():
                    out = (numerator + (w[:, None] * value).sum(0)) / (denominator + w.sum())
                    errors[name].append(np.linalg.norm(out - exact) / np.linalg.norm(exact))
    print(path.split("/")[-1], "zone", zone_share,
          " ".join(f"{name} {100 * np.mean(errors[name]):.2f}%" for name in names))


if __name__ == "__main__":
    main()
