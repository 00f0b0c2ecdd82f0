-- Group-wise CTR of every creative as of the latest night, best first within each group.
SELECT c.product_id, c.group_id, g.description, c.creative_id, cr.prompt, c.impressions, c.clicks,
       round(c.ctr_smoothed, 4) AS ctr_smoothed, round(c.ctr_low, 4) AS ctr_low, round(c.ctr_high, 4) AS ctr_high,
       rank() OVER (PARTITION BY c.product_id, c.group_id ORDER BY c.ctr_smoothed DESC) AS rank_in_group, c.ds
FROM group_creative_ctr c
JOIN (SELECT max(ds) AS ds FROM group_creative_ctr) latest ON c.ds = latest.ds
LEFT JOIN group_profiles g ON g.product_id = c.product_id AND g.group_id = c.group_id AND g.ds = c.ds
LEFT JOIN creatives cr ON cr.creative_id = c.creative_id
