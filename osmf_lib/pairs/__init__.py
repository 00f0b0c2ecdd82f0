"""Group-wise CTR and preference pairs (docs/design.md#pairs): what each of tonight's groups clicks on.

    group_creative_ctr      per (product, group, creative): impressions and clicks of the group's
                            current members over the look-back window, the raw CTR, and its Beta
                            posterior under an empirical-Bayes prior fitted per product (posterior
                            mean and 90% equal-tailed credible interval)
    group_preference_pairs  within one (product, group): creative A over creative B when both have
                            >= pairs.min_impressions, A's posterior mean is at least pairs.ratio_min
                            (and at most pairs.ratio_max, if set) times B's, and
                            P(CTR_A > CTR_B) >= pairs.min_confidence

**The prior** is fitted per product, over its (group, creative) cells, by the method of moments
of the beta-binomial: with n_i impressions and k_i clicks per cell, N = sum n_i, the pooled CTR
m = sum k_i / N and S = sum n_i (k_i / n_i - m)^2, the model gives
E[S] = m (1 - m) [(C - 1) + rho (N - sum n_i^2 / N - (C - 1))] over C cells, where
rho = 1 / (alpha + beta + 1) is the share of the spread that is real differences between cells
rather than binomial noise. Solving for rho gives alpha + beta = 1 / rho - 1, split by m. Where
rho cannot be estimated (one cell, no clicks or only clicks, one impression per cell) or the
estimate is not in (0, 1) (the cells differ no more than noise would make them), the prior is a
weak one worth WEAK_PRIOR_STRENGTH impressions at the product's pooled CTR (Laplace-smoothed, so
never 0 or 1): the data then decide.

**P(CTR_A > CTR_B)** for independent Beta posteriors A and B is E[F_B(A)] = the integral over
u in (0, 1) of F_B(F_A^-1(u)), taken by the midpoint rule on QUADRATURE_NODES points: deterministic,
and because the integrand rises monotonically from 0 to 1, within 1 / (2 x QUADRATURE_NODES)
(0.001) of the exact value for any parameters (a test checks it against Monte Carlo).

**Split**: `osmf_lib.inputs.split_of` puts every product in train, validation or test by a hash of its id; every
stage that holds data out uses it.

The per-product work is pandas/numpy/scipy (`preference.smooth_product`, `preference.product_pairs`);
Spark runs each with one groupBy(product).applyInPandas pass. Only `stages.build_preference_pairs`
reads and writes tables.
"""
