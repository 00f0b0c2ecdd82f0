-- Per product and group, as of the latest night that measured the product: its creatives ranked by
-- smoothed CTR (the posterior mean under the product's empirical-Bayes prior) with the 90% credible
-- interval, the raw counts behind it and the group's description.
SELECT c.product_id, pr.title, c.group_id, g.description,
       rank() OVER (PARTITION BY c.product_id, c.group_id ORDER BY c.ctr_smoothed DESC) AS rank_in_group,
       c.creative_id, cr.prompt, c.impressions, c.clicks, round(c.ctr, 4) AS ctr,
       round(c.ctr_smoothed, 4) AS ctr_smoothed, round(c.ctr_low, 4) AS ctr_low, round(c.ctr_high, 4) AS ctr_high,
       c.paag_version, c.ds
FROM group_creative_ctr c
JOIN (SELECT product_id, max(ds) AS ds FROM group_creative_ctr GROUP BY product_id) latest
  ON c.product_id = latest.product_id AND c.ds = latest.ds
LEFT JOIN group_profiles g ON g.product_id = c.product_id AND g.group_id = c.group_id AND g.ds = c.groups_ds
LEFT JOIN products pr ON pr.product_id = c.product_id
LEFT JOIN creatives cr ON cr.creative_id = c.creative_id
