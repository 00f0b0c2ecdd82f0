-- A member's creatives by key: for a user and a product, the user's group and the creatives served
-- to that group with their share of its traffic (`selected`: the group's best; the others explore),
-- from the latest night that published the product. Only the night's members are
-- here; osmf-serving (models:/osmf-serving@champion) places anyone, and serving_assignments holds
-- what it answered for a day's requests in bulk.
SELECT g.user_id, s.product_id, s.group_id, s.creative_id, s.traffic_share, s.selected, s.origin, s.image_uri,
       s.prompt, s.gmllm_version, s.grm_version, s.groups_ds, s.ds
FROM serving_creatives s
JOIN (SELECT product_id, max(ds) AS ds FROM serving_creatives GROUP BY product_id) latest
  ON s.product_id = latest.product_id AND s.ds = latest.ds
JOIN user_groups g ON g.product_id = s.product_id AND g.group_id = s.group_id AND g.ds = s.groups_ds
