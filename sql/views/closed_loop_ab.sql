-- The closed loop as an A/B test over all the traffic the night's osmf-serving placed. On a day
-- whose requests were assigned in bulk (serving_assignments), every impression of a (user,
-- product) answered with a generated creative either showed it ('served', a random
-- `synth.serve_share` of them in the simulated world) or what the logging policy picked
-- ('control'); the two arms differ only in the creative. `audience`: 'members' of the night's
-- groups, 'newcomers' placed by their attributes, 'all' of them.
SELECT ds,
       CASE WHEN grouping(reason) = 1 THEN 'all'
            WHEN reason = 'member' THEN 'members'
            WHEN reason = 'assigned' THEN 'newcomers'
            ELSE reason END AS audience,
       arm, count(*) AS impressions, sum(clicked) AS clicks, round(avg(clicked), 4) AS ctr
FROM (
  SELECT i.ds, a.reason, CASE WHEN i.creative_id = a.creative_id THEN 'served' ELSE 'control' END AS arm,
         CAST(i.clicked AS INT) AS clicked
  FROM serving_assignments a
  JOIN impressions i ON i.user_id = a.user_id AND i.product_id = a.product_id AND i.ds = a.ds
  WHERE a.origin = 'generated'
) shown
GROUP BY GROUPING SETS ((ds, arm, reason), (ds, arm))
ORDER BY ds, audience, arm
