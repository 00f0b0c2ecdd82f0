-- The closed loop as an A/B test. On the day after a night published generated creatives, every
-- impression of a (user, product) whose group got one either showed it ('served', a random
-- `synth.serve_share` of them in the simulated world) or what the logging policy picked
-- ('control'); the two arms differ only in the creative.
SELECT i.ds, CASE WHEN i.creative_id = s.creative_id THEN 'served' ELSE 'control' END AS arm,
       count(*) AS impressions, sum(CAST(i.clicked AS INT)) AS clicks,
       round(avg(CAST(i.clicked AS DOUBLE)), 4) AS ctr
FROM serving_creatives s
JOIN user_groups g ON g.product_id = s.product_id AND g.group_id = s.group_id AND g.ds = s.groups_ds
JOIN impressions i ON i.user_id = g.user_id AND i.product_id = g.product_id AND i.ds = date_add(s.ds, 1)
WHERE s.origin = 'generated'
GROUP BY i.ds, CASE WHEN i.creative_id = s.creative_id THEN 'served' ELSE 'control' END
ORDER BY i.ds, arm
