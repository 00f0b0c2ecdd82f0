-- A user's group for a product, night after night, and whether it changed since the night before.
SELECT product_id, user_id, ds, group_id,
       lag(group_id) OVER (PARTITION BY product_id, user_id ORDER BY ds) AS previous_group_id,
       coalesce(group_id != lag(group_id) OVER (PARTITION BY product_id, user_id ORDER BY ds), false) AS moved
FROM user_groups
