"""Adaptive product-aware grouping (docs/design.md#grouping).

Per product, the audience's PAAG embeddings are clustered with K-Means, K chosen by mean
silhouette; small groups are merged away; each group gets its distances, anchor points, an
attribute summary (values over-represented versus the product's audience) and a one-line
description.

The per-product work is plain pandas/numpy/scikit-learn (`clustering`, `profiles` and
`groups.group_product`), so evaluation and notebooks use it without Spark. `groups.group_audiences`
runs it for every product in one `groupBy(product).applyInPandas` pass, and `stages.group_users`
(the task) writes user_groups and group_profiles.
"""
