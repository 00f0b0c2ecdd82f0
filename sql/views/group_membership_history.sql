-- A user's group for a product, night after night, and whether the user moved since their last night.
-- Group ids are renumbered every night, so each group is matched to its predecessor: the group of
-- the user's previous night that it shares the most members with. A user moved when their
-- previous group is not their current group's predecessor.
WITH nights AS (
  SELECT product_id, user_id, ds, group_id,
         lag(ds) OVER (PARTITION BY product_id, user_id ORDER BY ds) AS previous_ds,
         lag(group_id) OVER (PARTITION BY product_id, user_id ORDER BY ds) AS previous_group_id
  FROM user_groups
),
overlap AS (
  SELECT product_id, ds, group_id, previous_ds, previous_group_id, count(*) AS shared
  FROM nights
  WHERE previous_ds IS NOT NULL
  GROUP BY product_id, ds, group_id, previous_ds, previous_group_id
),
predecessors AS (
  SELECT product_id, ds, group_id, previous_ds, previous_group_id AS predecessor_group_id
  FROM (
    SELECT *, row_number() OVER (
      PARTITION BY product_id, ds, group_id, previous_ds ORDER BY shared DESC, previous_group_id
    ) AS rank
    FROM overlap
  )
  WHERE rank = 1
)
SELECT n.product_id, n.user_id, n.ds, n.group_id, n.previous_ds, n.previous_group_id,
       p.predecessor_group_id,
       coalesce(n.previous_group_id != p.predecessor_group_id, false) AS moved
FROM nights n
LEFT JOIN predecessors p
  ON n.product_id = p.product_id AND n.ds = p.ds AND n.group_id = p.group_id AND n.previous_ds = p.previous_ds
